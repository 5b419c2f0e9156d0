"""tensormesh: a Python client for a tensormesh node's HTTP API.

    from tensormesh import Mesh
    mesh = Mesh("http://127.0.0.1:7070")
    c = mesh.matmul(a, b)                      # numpy in, numpy out
    job = mesh.submit("map", {"x": x}, {"ops": [{"op": "relu"}]})
    y = job.result()

See python/README.md for the API.
"""

from .arrays import prepare_array
from .client import TERMINAL_STATES, CidRef, Job, JobRef, Mesh, Progress, TopK, resolve_token
from .errors import TensormeshError, TensormeshWarning
from .model import ModelArtifacts, model_format, pack_model, read_model_dir, unpack_model, unpack_model_to_dir, write_model_dir

__version__ = "0.1.0"

__all__ = [
    "Mesh",
    "Job",
    "JobRef",
    "CidRef",
    "Progress",
    "TopK",
    "TensormeshError",
    "TensormeshWarning",
    "ModelArtifacts",
    "pack_model",
    "unpack_model",
    "read_model_dir",
    "write_model_dir",
    "unpack_model_to_dir",
    "model_format",
    "prepare_array",
    "resolve_token",
    "TERMINAL_STATES",
    "__version__",
]
