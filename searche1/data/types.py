"""Record types of the data layer: corpus passages and QA examples."""

from __future__ import annotations

from dataclasses import dataclass, field

from searche1.retrieval.base import join_contents, split_contents


@dataclass(frozen=True, slots=True)
class Passage:
    """A corpus passage. ``contents`` follows FlashRAG: ``"Title"\\ntext`` (title on the first line)."""

    id: str
    contents: str

    @property
    def title(self) -> str:
        return split_contents(self.contents)[0]

    @property
    def text(self) -> str:
        return split_contents(self.contents)[1]

    @classmethod
    def from_title_text(cls, id: str, title: str, text: str) -> "Passage":
        return cls(id=id, contents=join_contents(title, text))

    def to_json(self) -> dict:
        return {"id": self.id, "contents": self.contents}


@dataclass(slots=True)
class QAExample:
    """A question with its gold answers (any of them counts as correct)."""

    id: str
    question: str
    answers: list[str]
    dataset: str = ""
    metadata: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """FlashRAG jsonl record."""
        return {"id": self.id, "question": self.question, "golden_answers": list(self.answers), "metadata": self.metadata}
