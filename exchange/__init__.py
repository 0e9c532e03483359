"""exchange: an inter-agency official-document exchange bus.

Signed XML envelopes routed between agencies' E-Office systems over RabbitMQ,
with proof of delivery and a business status trail.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The versioned XSDs ship inside the package (``exchange/schemas/``, package data), so an installed
#: wheel validates envelopes without a source checkout. Code that needs a file opens it through
#: ``exchange.envelope.schema`` (importlib.resources); this path is for tools and docs.
SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
