"""lmms-eval hooks for the synthetic multiple-choice video task.

This file is copied verbatim next to the generated task YAML by ``tango.data.synthetic`` and loaded by lmms-eval
through ``!function utils.<name>`` (by file path, not as a package module), so it must stay self-contained: only the
standard library, no ``tango`` imports. The harness imports the same functions as
``tango.data.task_template.utils`` (e.g. ``parse_answer_letter``), so there is one answer parser.
"""

from __future__ import annotations

import re

LETTERS = "ABCD"

DEFAULT_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."

# 1. The whole reply is one letter, possibly wrapped in punctuation / markup: "B", "(b)", "B.", "**C**", "[D]".
_ONLY_LETTER = re.compile(r"^[^A-Za-z0-9]*([A-Da-d])[^A-Za-z0-9]*$")
# 2. An explicit marker: "Answer: B", "The answer is (c).", "Correct option - D", "<answer>A</answer>".
_MARKED = re.compile(
    r"\b(?:answer|option|choice)\b(?:\s+is\b)?[^A-Za-z0-9]{0,6}([A-Da-d])(?![A-Za-z0-9])(.?)",
    re.IGNORECASE,
)
# 3. A leading letter with a delimiter: "B. red", "(C) up", "d) left", "A: square".
_LEADING = re.compile(r"^[^A-Za-z0-9]*([A-Da-d])\s*[.):\]]")
# 4. A letter in parentheses anywhere: "I think (B) is right".
_PARENS = re.compile(r"\(([A-Da-d])\)")
# 5. A standalone capital letter anywhere: "It is B", "B red".
_CAPITAL = re.compile(r"(?<![A-Za-z0-9'])([A-D])(?![A-Za-z0-9'])")


def parse_answer_letter(text, options=None):
    """Extract the chosen option letter (``"A"``–``"D"``) from a model's free-text reply, or ``None``.

    Tried in order: a bare letter; an explicit "answer/option/choice" marker; a leading letter followed by ``.``,
    ``)``, ``:`` or ``]``; a letter in parentheses; the text of exactly one option (when ``options`` is given); a
    single standalone capital letter (an ``A`` followed by a lower-case word is read as the English article).
    Lower-case letters are accepted only where they cannot be an ordinary word ("a red circle" is not "A").
    """
    if text is None:
        return None
    text = str(text).strip()
    if not text:
        return None

    m = _ONLY_LETTER.match(text)
    if m:
        return m.group(1).upper()

    for m in _MARKED.finditer(text):
        letter, after = m.group(1), m.group(2)
        # A lower-case letter followed by a space is probably a word ("the answer is a red circle").
        if letter.isupper() or after in ("", ".", ")", "]", ",", ";", ":", "*", "<", "\n", '"', "'"):
            return letter.upper()

    m = _LEADING.match(text)
    if m:
        return m.group(1).upper()

    found = {x.upper() for x in _PARENS.findall(text)}
    if len(found) == 1:
        return found.pop()

    if options:
        hits = [
            LETTERS[i]
            for i, opt in enumerate(list(options)[: len(LETTERS)])
            if str(opt).strip()
            and re.search(r"(?<![A-Za-z0-9])" + re.escape(str(opt).strip()) + r"(?![A-Za-z0-9])", text, re.IGNORECASE)
        ]
        if len(hits) == 1:
            return hits[0]

    capitals = set()
    for m in _CAPITAL.finditer(text):
        if m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end() :]):
            continue  # "A red circle": the article, not option A
        capitals.add(m.group(1))
    if len(capitals) == 1:
        return capitals.pop()
    return None


def format_options(options):
    """``["red", "blue", ...]`` -> ``"A. red\\nB. blue\\n..."``."""
    return "\n".join(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options))


def doc_to_visual(doc):
    """The absolute path of the doc's mp4, as a one-element list (lmms-eval's video convention)."""
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """``pre_prompt + question + lettered options + post_prompt``."""
    kwargs = lmms_eval_specific_kwargs or {}
    pre_prompt = kwargs.get("pre_prompt", "")
    post_prompt = kwargs.get("post_prompt", DEFAULT_POST_PROMPT)
    return f"{pre_prompt}{doc['question']}\n{format_options(doc['options'])}{post_prompt}"


def doc_to_target(doc):
    return doc["answer"]


def process_results(doc, results):
    """``results`` is the list of generated strings (one for ``generate_until``); returns ``{"acc": 1.0 | 0.0}``."""
    reply = results[0] if results else ""
    letter = parse_answer_letter(reply, doc.get("options"))
    return {"acc": 1.0 if letter is not None and letter == doc["answer"] else 0.0}
