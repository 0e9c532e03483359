"""The catalogue of the conformance kit: the checks, their verdicts and the report of a run.

Only the standard library is imported here: pytest loads this module (through plugin.py)
in every test session of every project that installs exchange.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: The agency that sends to the adapter under test (node "central", recording adapter).
SENDER = "000.00.00.G22"
#: The agency the adapter under test hosts (node "local").
HOST = "000.00.00.H41"
#: A second recipient on the adapter's node, for the fan-out check (recording adapter).
PEER = "000.00.00.H29"

#: Backoff of the generated nodes: short, so transient-failure checks take seconds, not minutes.
RETRY_DELAYS = (1, 1, 1)
MAX_ATTEMPTS = 4
#: How many transient failures the transient check injects (must stay below MAX_ATTEMPTS).
TRANSIENT_FAILURES = 2


class Verdict(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Check:
    """One behaviour the kit proves, in the order the kit runs them."""

    name: str
    summary: str
    #: What the probe must support for the check to run: "transient", "permanent" or "send".
    needs: str = ""


CHECKS: tuple[Check, ...] = (
    Check(
        "adapter_starts_from_its_options",
        "the node starts the adapter with the options the probe gave, for the agency it hosts",
    ),
    Check(
        "document_with_attachments_reaches_the_eoffice_once",
        "a document with attachments reaches the E-Office exactly once, attachments byte-identical, "
        "and the sender's tracking shows delivered with the recipient's signed receipt",
    ),
    Check(
        "fan_out_copy_reaches_the_eoffice_once",
        "of a document sent to several agencies, the E-Office gets its own copy exactly once",
    ),
    Check(
        "duplicate_envelope_reaches_the_eoffice_once",
        "the same envelope published twice more on the wire reaches the E-Office once",
    ),
    Check("status_reaches_the_eoffice", "a business status answering a document the agency sent reaches its E-Office"),
    Check(
        "transient_failure_is_retried_and_delivered_once",
        "after transient E-Office failures the bus retries and the document arrives exactly once",
        needs="transient",
    ),
    Check(
        "permanent_failure_sends_a_non_delivery_receipt",
        "a permanent E-Office refusal gives the sender a FAILED non-delivery receipt and the E-Office "
        "never shows the document",
        needs="permanent",
    ),
    Check(
        "document_sent_by_the_eoffice_is_delivered",
        "a document the E-Office sends through the adapter reaches the other agency and its sender "
        "sees delivered in tracking",
        needs="send",
    ),
    Check(
        "no_message_reaches_the_eoffice_twice",
        "after everything settled, no message the kit sent appears twice at the E-Office",
    ),
    Check("stop_is_safe_twice", "Adapter.stop() can be called twice without raising"),
)

CHECK_NAMES = tuple(c.name for c in CHECKS)


class ConformanceFailure(AssertionError):
    """A check found the adapter misbehaving; the message says how."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    verdict: Verdict
    message: str = ""
    seconds: float = 0.0


@dataclass(slots=True)
class ConformanceReport:
    """The outcome of every check for one adapter kind."""

    kind: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.verdict is not Verdict.FAILED for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.verdict is Verdict.FAILED]

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r}; checks are {list(CHECK_NAMES)}")

    def raise_for_failures(self) -> None:
        """Raise :class:`ConformanceFailure` listing every failed check."""
        if not self.ok:
            raise ConformanceFailure(str(self))

    def __str__(self) -> str:
        lines = [
            f"conformance of adapter {self.kind!r}: "
            f"{sum(r.verdict is Verdict.PASSED for r in self.results)} passed, "
            f"{len(self.failures)} failed, {sum(r.verdict is Verdict.SKIPPED for r in self.results)} skipped"
        ]
        for r in self.results:
            mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[r.verdict.value]
            line = f"  {mark} {r.name} ({r.seconds:.1f}s)"
            if r.message:
                line += ": " + r.message.replace("\n", "\n      ")
            lines.append(line)
        return "\n".join(lines)
