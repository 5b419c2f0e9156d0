"""An in-tree PEP 517 backend: setuptools, plus a wheel writer for when ``wheel`` is missing.

Why it exists: setuptools before 70.1 builds wheels through the separate
``wheel`` package's ``bdist_wheel``. Build isolation would install it, but
``pip install --no-build-isolation ./python`` on a machine without ``wheel``
and without a reachable registry (this project's CI) fails with "invalid
command 'bdist_wheel'". So:

- when ``bdist_wheel`` is available, every hook is setuptools.build_meta's;
- otherwise setuptools still does the building (``egg_info`` for the
  metadata, ``build_py`` for the files, both from pyproject.toml), and this
  module only zips the result into a ``py3-none-any`` wheel with a RECORD.

Nothing is written into the source tree: setuptools' outputs go to a
temporary folder.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from setuptools import build_meta as _st

__all__ = [
    "build_wheel",
    "build_sdist",
    "build_editable",
    "get_requires_for_build_wheel",
    "get_requires_for_build_sdist",
    "get_requires_for_build_editable",
]

HERE = Path(__file__).resolve().parent.parent  # the project folder (python/)


def _have_bdist_wheel() -> bool:
    try:
        import setuptools.command.bdist_wheel  # noqa: F401  (setuptools >= 70.1)

        return True
    except ImportError:
        pass
    try:
        import wheel.bdist_wheel  # noqa: F401

        return True
    except ImportError:
        return False


build_sdist = _st.build_sdist
get_requires_for_build_sdist = _st.get_requires_for_build_sdist


def get_requires_for_build_wheel(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    return list(_st.get_requires_for_build_wheel(config_settings)) if _have_bdist_wheel() else []


def get_requires_for_build_editable(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    return list(_st.get_requires_for_build_editable(config_settings)) if _have_bdist_wheel() else []


def build_wheel(wheel_directory: str, config_settings: Optional[Dict[str, Any]] = None, metadata_directory: Optional[str] = None) -> str:
    if _have_bdist_wheel():
        return str(_st.build_wheel(wheel_directory, config_settings, metadata_directory))
    return _fallback_wheel(wheel_directory, editable=False)


def build_editable(wheel_directory: str, config_settings: Optional[Dict[str, Any]] = None, metadata_directory: Optional[str] = None) -> str:
    if _have_bdist_wheel():
        return str(_st.build_editable(wheel_directory, config_settings, metadata_directory))
    return _fallback_wheel(wheel_directory, editable=True)


def _run_setuptools(tmp: Path) -> Tuple[Path, Path]:
    """setuptools' egg_info and build_py into `tmp`; returns (egg-info folder, build lib)."""
    import warnings

    import setuptools

    egg_base, lib = tmp / "egg", tmp / "lib"
    egg_base.mkdir()
    cwd = os.getcwd()
    os.chdir(HERE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "[tool.setuptools] is still beta" on setuptools 61-68
            setuptools.setup(script_name="setup.py", script_args=["-q", "egg_info", "--egg-base", str(egg_base), "build_py", "--build-lib", str(lib)])
    finally:
        os.chdir(cwd)
    (info,) = egg_base.glob("*.egg-info")
    return info, lib


def _requires_dist(requires_txt: str) -> List[str]:
    """requires.txt ([extra:marker] sections) as Requires-Dist lines."""
    out: List[str] = []
    marker = ""
    for raw in requires_txt.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = re.fullmatch(r"\[(.*)\]", line)
        if m:
            extra, _, env = m.group(1).partition(":")
            parts = [f"({env})" if env else "", f'extra == "{extra}"' if extra else ""]
            marker = " and ".join(p for p in parts if p)
            continue
        out.append(f"Requires-Dist: {line}" + (f"; {marker}" if marker else ""))
    return out


def _metadata(info: Path) -> str:
    pkg_info = (info / "PKG-INFO").read_text(encoding="utf-8")
    head, sep, body = pkg_info.partition("\n\n")
    requires = info / "requires.txt"
    extra = _requires_dist(requires.read_text(encoding="utf-8")) if requires.exists() else []
    head = "\n".join([head.rstrip("\n"), *extra])
    return f"{head}\n\n{body}" if sep else f"{head}\n"


def _field(metadata: str, name: str) -> str:
    m = re.search(rf"^{name}: (.+)$", metadata, re.M)
    if m is None:
        raise RuntimeError(f"PKG-INFO has no {name}")
    return m.group(1).strip()


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def _fallback_wheel(wheel_directory: str, editable: bool) -> str:
    with tempfile.TemporaryDirectory(prefix="tensormesh-build-") as tmp_name:
        info, lib = _run_setuptools(Path(tmp_name))
        metadata = _metadata(info)
        name = re.sub(r"[-_.]+", "_", _field(metadata, "Name")).lower()
        version = _field(metadata, "Version")
        dist_info = f"{name}-{version}.dist-info"
        files: List[Tuple[str, bytes]] = []
        if editable:
            files.append((f"__editable__.{name}.pth", (str(HERE / "src") + "\n").encode("utf-8")))
        else:
            for file in sorted(p for p in lib.rglob("*") if p.is_file()):
                files.append((file.relative_to(lib).as_posix(), file.read_bytes()))
        files.append((f"{dist_info}/METADATA", metadata.encode("utf-8")))
        files.append((f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: tensormesh_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"))
        top = info / "top_level.txt"
        if top.exists():
            files.append((f"{dist_info}/top_level.txt", top.read_bytes()))
        record = "".join(f"{arcname},{_digest(data)},{len(data)}\n" for arcname, data in files) + f"{dist_info}/RECORD,,\n"
        files.append((f"{dist_info}/RECORD", record.encode("utf-8")))
        wheel_name = f"{name}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(Path(wheel_directory) / wheel_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arcname, data in files:
                zi = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
                zi.external_attr = 0o644 << 16
                zi.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(zi, data)
        return wheel_name
