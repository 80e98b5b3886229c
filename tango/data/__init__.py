"""Datasets for the harness: the offline synthetic video benchmark (``tango.data.synthetic``)."""

from tango.data.synthetic import (
    QUESTION_TYPES,
    ensure_synthetic_task,
    load_docs,
    parse_answer_letter,
    register_question_type,
    render_video,
)

__all__ = [
    "QUESTION_TYPES",
    "ensure_synthetic_task",
    "load_docs",
    "parse_answer_letter",
    "register_question_type",
    "render_video",
]
