"""``densenet-multi convert``: any framework's DenseNet file in, any framework's file out, verified.

See :func:`convert` (the Python API), :mod:`.formats` (what is read and written),
:mod:`.detect` (how a file is recognised), :mod:`.worker` (the per-framework
processes) and ``docs/convert.md``.
"""

from .api import ConversionReport, VerificationError, convert, read_canonical
from .detect import ConvertError, CorruptFileError, Detection, DetectionError
from .formats import FORMATS, TARGETS
from .worker import Session, WorkerError

__all__ = ["FORMATS", "TARGETS", "ConversionReport", "ConvertError", "CorruptFileError", "Detection",
           "DetectionError", "Session", "VerificationError", "WorkerError", "convert", "read_canonical"]
