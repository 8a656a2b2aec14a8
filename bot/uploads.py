"""Reading one uploaded file from a ``multipart/form-data`` request, with a size limit.

The app's ``client_max_size`` (1 MiB) guards ordinary bodies; an upload is streamed part by part
instead and cut off as soon as it passes its own limit, so an oversized file is refused without
being held in memory.
"""

from __future__ import annotations

from urllib.parse import unquote

from aiohttp import BodyPartReader, web

CHUNK = 64 * 1024
FORM_OVERHEAD = 64 * 1024
"""Room for the multipart framing and the other fields of the form."""


class UploadError(Exception):
    """The request carries no usable file: ``status`` 400, 413 or 415 and a machine code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


async def read_uploaded_file(
    request: web.Request, *, field: str = "file", limit: int
) -> tuple[str, bytes, dict[str, str]]:
    """(file name, content, the form's other text fields) of the file in ``field``.

    Fields before the file are returned; the rest of the body is not read.
    """
    if request.content_type != "multipart/form-data":
        raise UploadError(
            415, "unsupported_media_type", f"send multipart/form-data with a file field {field!r}"
        )
    length = request.content_length
    if length is not None and length > limit + FORM_OVERHEAD:
        raise UploadError(413, "too_large", f"the file is larger than {limit} bytes")
    fields: dict[str, str] = {}
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue  # a nested multipart: not something a form sends
        if part.name == field and part.filename is not None:
            data = bytearray()
            while chunk := await part.read_chunk(CHUNK):
                data += chunk
                if len(data) > limit:
                    raise UploadError(413, "too_large", f"the file is larger than {limit} bytes")
            if not data:
                raise UploadError(400, "no_file", f"the file in {field!r} is empty")
            # Browsers send UTF-8 names as they are; some clients percent-encode them.
            return unquote(part.filename), bytes(data), fields
        if part.name and len(fields) < 20:
            fields[part.name] = (await part.read_chunk(CHUNK)).decode("utf-8", "replace")
    raise UploadError(400, "no_file", f"no file in the form field {field!r}")
