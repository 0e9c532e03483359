"""exchange: an inter-agency official-document exchange bus.

Signed XML envelopes routed between agencies' E-Office systems over RabbitMQ,
with proof of delivery and a business status trail.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The versioned XSDs live at the project root (``schemas/``), beside the package.
SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
