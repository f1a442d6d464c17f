"""Typed edit requests, validated on construction, in and out of the CounterFact record format."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class InvalidRequestError(ValueError):
    """An edit request is malformed; the message names the case id and the field."""


def _with_leading_space(text: str) -> str:
    return text if text.startswith(" ") else " " + text


@dataclass(frozen=True)
class EditRequest:
    """One fact to rewrite: ``prompt.replace("{}", subject)`` should be completed by ``target_new``.

    Targets are normalized to start with exactly one leading space (the reference code prepends one
    to ``target_new``; we do the same for ``target_true`` so that both are scored alike).
    ``target_new`` must differ from ``target_true``.
    """

    case_id: int | str
    prompt: str  # contains exactly one "{}" where the subject goes
    subject: str
    target_new: str
    target_true: str
    relation_id: str = ""
    target_new_id: str = ""
    target_true_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        def bad(field_name: str, why: str) -> InvalidRequestError:
            return InvalidRequestError(f"edit request case_id={self.case_id!r}: field {field_name!r} {why}")

        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            count = self.prompt.count("{}") if isinstance(self.prompt, str) else "no"
            raise bad("prompt", f"must contain exactly one '{{}}' placeholder for the subject, found {count}: "
                      f"{self.prompt!r}")
        if "{" in self.prompt.replace("{}", "") or "}" in self.prompt.replace("{}", ""):
            raise bad("prompt", f"has stray braces besides the '{{}}' placeholder: {self.prompt!r}")
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise bad("subject", "must be a non-empty string")
        for name in ("target_new", "target_true"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise bad(name, "must be a non-empty string")
            object.__setattr__(self, name, _with_leading_space(value))
        if self.target_new.strip() == self.target_true.strip():
            raise bad("target_new", f"equals target_true ({self.target_true.strip()!r}); an edit must change the answer")

    @property
    def rewrite_prompt(self) -> str:
        """The prompt with the subject filled in."""
        return fill_subject(self.prompt, self.subject)

    @classmethod
    def from_counterfact(cls, record: Mapping[str, Any]) -> EditRequest:
        """Build from a CounterFact record (``{"case_id", "requested_rewrite": {...}, ...}``)."""
        case_id = record.get("case_id", "?")
        try:
            rw = record["requested_rewrite"]
            return cls(
                case_id=case_id,
                prompt=rw["prompt"],
                subject=rw["subject"],
                target_new=rw["target_new"]["str"],
                target_true=rw["target_true"]["str"],
                relation_id=str(rw.get("relation_id", "")),
                target_new_id=str(rw["target_new"].get("id", "")),
                target_true_id=str(rw["target_true"].get("id", "")),
                extra={k: v for k, v in record.items() if k not in ("case_id", "requested_rewrite")},
            )
        except KeyError as exc:
            raise InvalidRequestError(
                f"edit request case_id={case_id!r}: missing field {exc.args[0]!r} (CounterFact records need "
                "requested_rewrite{prompt, subject, target_new{str}, target_true{str}})"
            ) from exc

    def to_counterfact(self) -> dict[str, Any]:
        """The CounterFact record; target strings are written without the leading space (as in the dataset)."""
        record: dict[str, Any] = {
            "case_id": self.case_id,
            "requested_rewrite": {
                "prompt": self.prompt,
                "subject": self.subject,
                "relation_id": self.relation_id,
                "target_new": {"str": self.target_new.strip(), "id": self.target_new_id},
                "target_true": {"str": self.target_true.strip(), "id": self.target_true_id},
            },
        }
        record.update(dict(self.extra))
        return record


def fill_subject(template: str, subject: str) -> str:
    """Replace the single "{}" with the subject (no ``str.format``: subjects may contain braces)."""
    return template.replace("{}", subject, 1)


def requests_from_counterfact(records: Iterable[Mapping[str, Any]]) -> list[EditRequest]:
    """Validate a list of CounterFact records; all errors are reported together."""
    out: list[EditRequest] = []
    errors: list[str] = []
    for record in records:
        try:
            out.append(EditRequest.from_counterfact(record))
        except InvalidRequestError as exc:
            errors.append(str(exc))
    if errors:
        raise InvalidRequestError(f"{len(errors)} invalid edit request(s):\n" + "\n".join(errors))
    return out
