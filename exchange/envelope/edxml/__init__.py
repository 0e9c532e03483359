"""The edXML codec: QCVN 102:2016 packages, as real senders write them, to envelopes and back.

E-Office systems speak edXML; the bus speaks envelopes (docs/ENVELOPE.md). This
package is the only place where edXML names appear (docs/EDXML.md):

- :mod:`.reader` — :func:`import_package`, tolerant of the shapes seen in the wild;
- :mod:`.writer` — :func:`export_package`, what the hub's edXML library reads;
- :mod:`.ids` — organ ids that are not QCVN 102 codes, mapped through directory aliases;
- :mod:`.source` — the package as the sender wrote it, carried in the envelope (lossless export);
- :mod:`.extras` — unmodelled fields as ``(path, text)`` pairs, for packages written from the model;
- :mod:`.files` — an attachment as a file for an E-Office (a ZIP-wrapped one unwrapped, bounded).
"""

from exchange.envelope.edxml._common import (
    EDXML_LIMITS,
    EDXML_NS,
    MAX_ATTACHMENT_BYTES,
    MAX_CODE_NUMBER,
    VIETNAM_TZ,
    DocumentIdLookup,
    DocumentResolver,
    code_text,
    document_key,
    edxml_document_id,
    reference_of,
)
from exchange.envelope.edxml.extras import canonical_extra
from exchange.envelope.edxml.files import OfferedFile, offered_file
from exchange.envelope.edxml.ids import OrganIdMapper, OrganIdUse, RefusedRecipient
from exchange.envelope.edxml.reader import TRANSFER_TYPE_KEY, EdxmlPackage, LegacySignature, import_package
from exchange.envelope.edxml.source import PackageSource
from exchange.envelope.edxml.writer import OrganIdFor, export_package

__all__ = [
    "EDXML_LIMITS",
    "EDXML_NS",
    "MAX_ATTACHMENT_BYTES",
    "MAX_CODE_NUMBER",
    "TRANSFER_TYPE_KEY",
    "VIETNAM_TZ",
    "DocumentIdLookup",
    "DocumentResolver",
    "EdxmlPackage",
    "LegacySignature",
    "OfferedFile",
    "OrganIdFor",
    "OrganIdMapper",
    "OrganIdUse",
    "PackageSource",
    "RefusedRecipient",
    "canonical_extra",
    "code_text",
    "document_key",
    "edxml_document_id",
    "export_package",
    "import_package",
    "offered_file",
    "reference_of",
]
