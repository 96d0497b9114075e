"""A teacher in another process: ``torchkd serve-teacher RECIPE`` runs a causal-LM teacher
behind HTTP (:class:`TeacherServer`, :func:`bind`) and answers token batches with exactly what
a teacher cache (:mod:`torchkd.lm.cache`) stores for them, top-k or sampled, the temperature
applied at the source; a recipe's ``teacher: {server: URL}`` trains against it
(:class:`TeacherServerDataset`) as against that cache. The wire format (safetensors, never
pickle) is :mod:`torchkd.lm.server.protocol`.
"""

from torchkd.lm.server.client import TeacherServerClient, TeacherServerDataset
from torchkd.lm.server.protocol import TeacherServerError
from torchkd.lm.server.serve import RequestError, TeacherServer, bind, server_url

__all__ = [
    "RequestError",
    "TeacherServer",
    "TeacherServerClient",
    "TeacherServerDataset",
    "TeacherServerError",
    "bind",
    "server_url",
]
