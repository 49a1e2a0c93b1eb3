"""MeZO's prompt templates and verbalisers (``large_models/templates.py``), reproduced exactly.

``encode(ex)`` renders the prompt without an answer; ``verbalize(ex, candidate)`` renders the prompt
followed by the candidate. The answer tokens are those of ``verbalize`` beyond those of ``encode``
(MeZO's ``option_len``), so the exact spacing matters: e.g. SST-2 ``"<s> It was"`` vs
``"<s> It was great"`` makes the option " great".
"""

from __future__ import annotations

from typing import Any, ClassVar

from zojax.tasks.base import Example


class Template:
    """Base template: subclasses implement :meth:`encode` and :meth:`verbalize`."""

    def encode(self, ex: Example) -> str:
        """The prompt without an answer."""
        raise NotImplementedError

    def verbalize(self, ex: Example, candidate: Any) -> str:
        """The prompt followed by ``candidate`` rendered as an answer."""
        raise NotImplementedError


class SST2Template(Template):
    """``"<sentence> It was"`` + `` terrible``/`` great``."""

    verbalizer: ClassVar[dict[int, str]] = {0: "terrible", 1: "great"}

    def encode(self, ex: Example) -> str:
        return f"{ex.data['sentence'].strip()} It was"

    def verbalize(self, ex: Example, candidate: Any) -> str:
        return f"{ex.data['sentence'].strip()} It was {self.verbalizer[candidate]}"


class RTETemplate(Template):
    """PromptSource-style RTE; label 0 (entailment) -> Yes."""

    verbalizer: ClassVar[dict[int, str]] = {0: "Yes", 1: "No"}

    def encode(self, ex: Example) -> str:
        d = ex.data
        return f'{d["premise"]}\nDoes this mean that "{d["hypothesis"]}" is true? Yes or No?\n'

    def verbalize(self, ex: Example, candidate: Any) -> str:
        return self.encode(ex) + self.verbalizer[candidate]


class CBTemplate(Template):
    """CB with Yes/No/Maybe for entailment/contradiction/neutral."""

    verbalizer: ClassVar[dict[int, str]] = {0: "Yes", 1: "No", 2: "Maybe"}

    def encode(self, ex: Example) -> str:
        d = ex.data
        return f'Suppose {d["premise"]} Can we infer that "{d["hypothesis"]}"? Yes, No, or Maybe?\n'

    def verbalize(self, ex: Example, candidate: Any) -> str:
        return self.encode(ex) + self.verbalizer[candidate]


class BoolQTemplate(Template):
    r"""MeZO's default BoolQ template (``BoolQTemplateV3``): ``"<passage> <Question>?\n"`` + Yes/No.

    The question gets a final "?" if missing and its first letter upper-cased."""

    def _prompt(self, ex: Example) -> str:
        q = ex.data["question"]
        if not q.endswith("?"):
            q = q + "?"
        q = q[0].upper() + q[1:]
        return f"{ex.data['passage']} {q}\n"

    def encode(self, ex: Example) -> str:
        return self._prompt(ex)

    def verbalize(self, ex: Example, candidate: Any) -> str:
        return self._prompt(ex) + str(candidate)


class WSCTemplate(Template):
    """WSC: does the pronoun (span2, lower-cased) refer to span1?"""

    verbalizer: ClassVar[dict[int, str]] = {0: "No", 1: "Yes"}

    def encode(self, ex: Example) -> str:
        d = ex.data
        return (
            f'{d["text"]}\nIn the previous sentence, does the pronoun "{d["span2_text"].lower()}" '
            f"refer to {d['span1_text']}? Yes or No?\n"
        )

    def verbalize(self, ex: Example, candidate: Any) -> str:
        return self.encode(ex) + self.verbalizer[candidate]


class WiCTemplate(Template):
    """WiC (MeZO's text says "Yes, No?", not "Yes or No?")."""

    verbalizer: ClassVar[dict[int, str]] = {0: "No", 1: "Yes"}

    def encode(self, ex: Example) -> str:
        d = ex.data
        return (
            f'Does the word "{d["word"]}" have the same meaning in these two sentences? Yes, No?\n'
            f"{d['sentence1']}\n{d['sentence2']}\n"
        )

    def verbalize(self, ex: Example, candidate: Any) -> str:
        return self.encode(ex) + self.verbalizer[candidate]


class MultiRCTemplate(Template):
    """MultiRC, one (paragraph, question, answer) per example."""

    verbalizer: ClassVar[dict[int, str]] = {0: "No", 1: "Yes"}

    def encode(self, ex: Example) -> str:
        d = ex.data
        return (
            f"{d['paragraph']}\nQuestion: {d['question']}\n"
            f'I found this answer "{d["answer"]}". Is that correct? Yes or No?\n'
        )

    def verbalize(self, ex: Example, candidate: Any) -> str:
        return self.encode(ex) + self.verbalizer[candidate]


class COPATemplate(Template):
    """COPA: premise without its final "." + " so "/" because " + candidate whose first word is
    lower-cased unless it is "I" (MeZO's ``capitalization="correct"``)."""

    def _prompt(self, ex: Example) -> str:
        premise = ex.data["premise"].rstrip()
        if premise.endswith("."):
            premise = premise[:-1]
        q = ex.data["question"]
        if q == "effect":
            conj = " so "
        elif q == "cause":
            conj = " because "
        else:
            raise ValueError(f"COPA question must be cause/effect, got {q!r}")
        return premise + conj

    @staticmethod
    def capitalize(c: str) -> str:
        """Lower-case the first word unless it is "I"."""
        words = c.split(" ")
        if words[0] != "I":
            words[0] = words[0].lower()
        return " ".join(words)

    def encode(self, ex: Example) -> str:
        return self._prompt(ex)

    def verbalize(self, ex: Example, candidate: Any) -> str:
        return self._prompt(ex) + self.capitalize(candidate)


class ReCoRDTemplate(Template):
    r"""ReCoRD's default template: ``"<passage>\n<query>\nQuestion: what is the
    "@placeholder"\nAnswer:"`` + `` <entity>``.

    Note: MeZO's ``ReCoRDDataset.get_template`` actually returns :class:`ReCoRDTemplateGPT3`;
    that variant is available as ``get_task("record", template="gpt3")``."""

    def encode(self, ex: Example) -> str:
        d = ex.data
        return f'{d["passage"]}\n{d["query"]}\nQuestion: what is the "@placeholder"\nAnswer:'

    def verbalize(self, ex: Example, candidate: Any) -> str:
        return f"{self.encode(ex)} {candidate}"


class ReCoRDTemplateGPT3(Template):
    """MeZO's ``ReCoRDTemplateGPT3``: "- " bullets for highlights, query with the entity."""

    def encode(self, ex: Example) -> str:
        passage = ex.data["passage"].replace("@highlight\n", "- ")
        return f"{passage}\n-"

    def verbalize(self, ex: Example, candidate: Any) -> str:
        passage = ex.data["passage"].replace("@highlight\n", "- ")
        c = candidate[0] if isinstance(candidate, list | tuple) else candidate
        return f"{passage}\n- {ex.data['query'].replace('@placeholder', c)}"


class SQuADTemplate(Template):
    """SQuAD (MeZO's ``SQuADv2Template``); the gold rendering ends with a newline."""

    def encode(self, ex: Example) -> str:
        d = ex.data
        return f"Title: {d['title']}\nContext: {d['context']}\nQuestion: {d['question'].strip()}\nAnswer:"

    def verbalize(self, ex: Example, candidate: Any) -> str:
        # MeZO ignores ``candidate`` and renders the first gold answer
        return f"{self.encode(ex)} {ex.data['answers'][0]}\n"


class DROPTemplate(Template):
    """DROP; the gold rendering ends with a newline."""

    def encode(self, ex: Example) -> str:
        d = ex.data
        return f"Passage: {d['context']}\nQuestion: {d['question'].strip()}\nAnswer:"

    def verbalize(self, ex: Example, candidate: Any) -> str:
        return f"{self.encode(ex)} {ex.data['answers'][0]}\n"
