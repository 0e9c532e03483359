"""pytest integration of the adapter conformance kit.

pytest loads this module in every session where exchange is installed (the
``pytest11`` entry point), so it imports only pytest, the standard library and
the kit's light modules; the bus itself is built only when a conformance test runs.

An adapter package uses it in one line::

    from exchange.conformance import conformance_tests
    TestMailboxConformance = conformance_tests(MailboxProbe)

which yields one test per check (``test_document_with_attachments_reaches_the_eoffice_once``,
…). The kit runs once per class, in its own event loop and thread (so it needs no
pytest-asyncio settings), on the broker named by ``--conformance-amqp-url``,
``EXCHANGE_CONFORMANCE_AMQP_URL`` or ``amqp://guest:guest@127.0.0.1:5672/``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from exchange.conformance.catalogue import CHECKS, Check, Verdict

if TYPE_CHECKING:
    from exchange.adapters.base import Adapter
    from exchange.conformance.catalogue import ConformanceReport
    from exchange.conformance.probe import EOfficeProbe

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
AMQP_URL_ENV = "EXCHANGE_CONFORMANCE_AMQP_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("exchange-conformance", "exchange adapter conformance kit")
    group.addoption(
        "--conformance-amqp-url",
        default=None,
        metavar="URL",
        help=f"RabbitMQ for adapter conformance tests (default: ${AMQP_URL_ENV} or {DEFAULT_AMQP_URL}); "
        "each run uses its own topology prefix and deletes it afterwards",
    )


def amqp_url_for(config: pytest.Config) -> str:
    """The broker URL from the command line, the environment or the default."""
    return config.getoption("conformance_amqp_url", default=None) or os.environ.get(AMQP_URL_ENV) or DEFAULT_AMQP_URL


@pytest.fixture(scope="session")
def conformance_amqp_url(pytestconfig: pytest.Config) -> str:
    """The broker the kit builds its bus on; override this fixture to use one of your own fixtures."""
    return amqp_url_for(pytestconfig)


@pytest.fixture(scope="class")
def conformance_report(
    request: pytest.FixtureRequest, conformance_amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> ConformanceReport:
    """Run the kit once for the requesting :class:`ConformanceTests` subclass."""
    from exchange.conformance.checks import run_conformance_sync

    cls = request.cls
    probe = getattr(cls, "probe", None)
    if probe is None:
        pytest.fail(
            f"{getattr(cls, '__name__', 'the test')} sets no probe: subclass ConformanceTests and set "
            "`probe = YourProbe` (an EOfficeProbe subclass)",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp(f"conformance-{probe.kind or 'unnamed'}")
    return run_conformance_sync(
        probe,
        amqp_url=conformance_amqp_url,
        workdir=workdir,
        adapter=getattr(cls, "adapter", None),
        timeout=getattr(cls, "timeout", 20.0),
    )


def _test_for(check: Check) -> Any:
    def test(self: ConformanceTests, conformance_report: ConformanceReport) -> None:
        result = conformance_report.result(check.name)
        if result.verdict is Verdict.SKIPPED:
            pytest.skip(result.message)
        if result.verdict is Verdict.FAILED:
            pytest.fail(f"[{conformance_report.kind}] {check.summary}:\n{result.message}", pytrace=False)

    test.__name__ = test.__qualname__ = f"test_{check.name}"
    test.__doc__ = check.summary[:1].upper() + check.summary[1:] + "."
    return test


class ConformanceTests:
    """Base of a test class that runs the kit once and reports one test per check.

    Subclass it with a name starting with ``Test`` and set ``probe`` (and ``adapter``
    when the adapter is not installed under the probe's kind), or call
    :func:`conformance_tests`. The fixtures come from this plugin (loaded automatically
    through the ``pytest11`` entry point; with plugin autoloading disabled, pass
    ``-p exchange.conformance.plugin``). Override ``conformance_amqp_url`` in a
    conftest or the test module to use a broker chosen by your own fixtures.
    """

    #: The E-Office probe of the adapter under test.
    probe: ClassVar[type[EOfficeProbe]]
    #: The adapter class, when it is not installed under ``probe.kind`` (the kit registers it for the run).
    adapter: ClassVar[type[Adapter] | None] = None
    #: Bound of each wait for something to arrive, in seconds.
    timeout: ClassVar[float] = 20.0


for _check in CHECKS:
    setattr(ConformanceTests, f"test_{_check.name}", _test_for(_check))
del _check


def conformance_tests(
    probe: type[EOfficeProbe], *, adapter: type[Adapter] | None = None, base: type[ConformanceTests] = ConformanceTests
) -> type[ConformanceTests]:
    """A test class running the kit for ``probe``: assign it to a module-level name starting with ``Test``."""
    name = f"Test{''.join(p.capitalize() for p in (probe.kind or 'unnamed').replace('-', '_').split('_'))}Conformance"
    return type(
        name,
        (base,),
        {
            "probe": probe,
            "adapter": adapter,
            "__doc__": f"Adapter conformance of {probe.kind!r}, played by {probe.__name__}.",
        },
    )
