"""The teacher server (``torchkd serve-teacher``): a causal-LM teacher in its own process that
answers token batches with what a teacher cache stores for them (:class:`TeacherServer`), over
HTTP (:func:`bind`; the wire format: :mod:`torchkd.lm.server.protocol`)."""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from torch import Tensor, nn

from torchkd.lm.cache.format import ENTROPY_DTYPE, VALUE_DTYPE, teacher_fingerprint, token_id_dtype
from torchkd.lm.cache.write import check_head, check_k, check_samples, stored_batch
from torchkd.lm.model import output_projection
from torchkd.lm.server.protocol import (
    ANSWER_PATH,
    CHECKED,
    INPUT_KEYS,
    PROTOCOL,
    SETTINGS_PATH,
    VERSION,
    decode,
    encode,
    mismatches,
)
from torchkd.losses import default_chunk_size
from torchkd.losses._common import check_temperature

__all__ = ["MAX_REQUEST_BYTES", "RequestError", "TeacherServer", "bind", "server_url"]

MAX_REQUEST_BYTES = 256 * 2**20  # a larger body is refused (413)


class RequestError(Exception):
    """A request the server refuses: its HTTP ``status`` and a message saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class TeacherServer:
    """Answers a batch of token ids with the tensors a teacher cache of ``teacher`` written
    with the same settings stores for those rows
    (:func:`~torchkd.lm.cache.write.stored_batch`: the top-``k`` log-probabilities of
    ``softmax(z / T)`` and the tail, or ``samples`` draws seeded per row index): the
    temperature is applied here, at the source. One batch runs at a time, in eval mode and
    without gradients.

    Args:
        teacher: a causal LM, already on ``device``.
        kind: ``"topk"`` or ``"sampled"``.
        k: tokens per position (top-k), or a sampled teacher's exact head (None: none).
        samples: draws per position (sampled).
        seed: the seed of a sampled teacher's draws.
        temperature: the softening temperature.
        teacher_source: where the teacher comes from
            (:func:`~torchkd.lm.cache.format.source_fingerprint`), reported to clients.
        chunk_size: positions per logits chunk (default
            :func:`~torchkd.losses.default_chunk_size`).
        device: where the batches go (default: where the teacher's parameters are).
    """

    def __init__(
        self,
        teacher: nn.Module,
        *,
        kind: str = "topk",
        k: int | None = None,
        samples: int | None = None,
        seed: int = 0,
        temperature: float = 1.0,
        teacher_source: str | None = None,
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if kind == "topk":
            check_k(k, teacher)
        elif kind == "sampled":
            check_samples(samples)
            if k is not None:
                check_head(k, teacher)
        else:
            raise ValueError(f"kind must be 'topk' or 'sampled', got {kind!r}")
        check_temperature(temperature)
        self.teacher = teacher.eval()
        self.vocab_size = output_projection(teacher, "teacher").weight.shape[0]
        self.device = torch.device(device or next(teacher.parameters()).device)
        self._options = {
            "kind": kind,
            "k": k,
            "samples": samples if kind == "sampled" else None,
            "seed": seed if kind == "sampled" else None,
            "temperature": float(temperature),
            "chunk_size": chunk_size or default_chunk_size(self.vocab_size),
            "id_dtype": token_id_dtype(self.vocab_size),
        }
        self.settings = {
            "protocol": PROTOCOL,
            "version": VERSION,
            "teacher_fingerprint": teacher_fingerprint(teacher),
            "teacher_source": teacher_source,
            **{key: self._options[key] for key in ("kind", "k", "samples", "seed")},
            "temperature": float(temperature),
            "vocab_size": self.vocab_size,
            "token_id_dtype": str(self._options["id_dtype"]).removeprefix("torch."),
            "value_dtype": str(VALUE_DTYPE if kind == "topk" else ENTROPY_DTYPE).removeprefix(
                "torch."
            ),
        }
        self._lock = threading.Lock()

    def answer(self, body: bytes) -> bytes:
        """The response payload to a request payload.

        Raises:
            RequestError: 400 for a malformed request (naming what is wrong), 409 for one
                expecting other settings (naming both values).
        """
        try:
            tensors, expected = decode(body)
        except ValueError as error:
            raise RequestError(400, f"the request body is {error}") from None
        unknown = sorted(set(expected) - set(CHECKED))
        if unknown:
            raise RequestError(
                400, f"the request expects unknown settings {unknown}; known: {list(CHECKED)}"
            )
        refused = mismatches(expected, self.settings)
        if refused:
            raise RequestError(409, "this server serves other settings: " + "; ".join(refused))
        inputs, rows = self._inputs(tensors)
        with self._lock, torch.no_grad():
            inputs = {key: value.to(self.device) for key, value in inputs.items()}
            # what a cache shard of these rows holds
            stored = stored_batch(self.teacher, inputs, rows, **self._options)
        return encode(stored, self.settings)

    def _inputs(self, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[int]]:
        """The teacher's inputs (as sent, so that they are those a cache writer passes) and
        the row indices of a request, checked."""
        unknown = sorted(set(tensors) - {*INPUT_KEYS, "index"})
        if unknown:
            raise RequestError(
                400, f"unknown request tensors {unknown}; expected {[*INPUT_KEYS, 'index']}"
            )
        ids = tensors.get("input_ids")
        if ids is None:
            raise RequestError(400, "the request holds no input_ids tensor")
        if (
            ids.dim() != 2
            or 0 in ids.shape
            or ids.dtype.is_floating_point
            or ids.dtype == torch.bool
        ):
            raise RequestError(
                400,
                f"input_ids must be a non-empty integer [B, L] tensor, got {ids.dtype} "
                f"{list(ids.shape)}",
            )
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise RequestError(
                400,
                f"input_ids must lie in [0, {self.vocab_size}) (the teacher's vocabulary), "
                f"got values in [{int(ids.min())}, {int(ids.max())}]",
            )
        inputs = {"input_ids": ids}
        mask = tensors.get("attention_mask")
        if mask is not None:
            if mask.shape != ids.shape or not ((mask == 0) | (mask == 1)).all():
                raise RequestError(
                    400,
                    f"attention_mask must be 0 or 1 with input_ids' shape {list(ids.shape)}, "
                    f"got {mask.dtype} {list(mask.shape)}",
                )
            inputs["attention_mask"] = mask
        index = tensors.get("index")
        if index is None:
            if self._options["kind"] == "sampled":
                raise RequestError(
                    400, "a sampled teacher needs the rows' index tensor (it seeds their draws)"
                )
            return inputs, list(range(ids.shape[0]))
        if index.shape != ids.shape[:1] or index.dtype != torch.int64 or (index < 0).any():
            raise RequestError(
                400,
                f"index must be non-negative int64 [{ids.shape[0]}] (one per row), got "
                f"{index.dtype} {list(index.shape)}",
            )
        return inputs, index.tolist()


def _handler(server: TeacherServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"{PROTOCOL}/{VERSION}"

        def do_GET(self) -> None:
            if self.path != SETTINGS_PATH:
                self._refuse(404, f"no {self.path} here; GET {SETTINGS_PATH}, POST {ANSWER_PATH}")
                return
            self._send(200, "application/json", json.dumps(server.settings).encode())

        def do_POST(self) -> None:
            if self.path != ANSWER_PATH:
                self._refuse(404, f"no {self.path} here; POST {ANSWER_PATH}")
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._refuse(411, "the request needs a Content-Length header")
                return
            if int(length) > MAX_REQUEST_BYTES:
                self._refuse(413, f"the request body is over {MAX_REQUEST_BYTES} bytes")
                return
            body = self.rfile.read(int(length))
            try:
                payload = server.answer(body)
            except RequestError as error:
                self._refuse(error.status, str(error))
                return
            except Exception as error:  # the teacher failed: say so, keep serving
                self._refuse(500, f"the teacher failed: {type(error).__name__}: {error}")
                return
            self._send(200, "application/octet-stream", payload)

        def _refuse(self, status: int, message: str) -> None:
            print(f"{self.command} {self.path}: {status} {message}", file=sys.stderr, flush=True)
            self._send(status, "application/json", json.dumps({"error": message}).encode())

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: a line per batch would flood the log (refusals are printed)."""

    return Handler


def bind(server: TeacherServer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server answering for ``server`` on ``host:port`` (port 0: a free one), bound but
    not yet serving: call its ``serve_forever()``; :func:`server_url` is its address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    return Server((host, port), _handler(server))


def server_url(httpd: ThreadingHTTPServer) -> str:
    """``http://HOST:PORT`` of a bound server (the port it got, for port 0)."""
    host, port = httpd.server_address[:2]
    host = f"[{host}]" if ":" in str(host) else host
    return f"http://{host}:{port}"
