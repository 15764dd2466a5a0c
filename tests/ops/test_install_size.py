"""The install stays CPU-only: no CUDA build of xgboost, no NVIDIA library (NCCL alone is
470 MB), in what pyproject.toml's run dependencies pull in or in the installed set."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, distribution, distributions

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.registry.store import library_versions
from tests.conftest import REPO

# distributions that bundle or pull CUDA: the `xgboost` wheel (the CPU build is xgboost-cpu)
CUDA_BUILDS = {"xgboost", "xgboost-cu12", "xgboost-cu13"}


def is_cuda(name: str) -> bool:
    name = canonicalize_name(name)
    return name.startswith("nvidia-") or name in CUDA_BUILDS


def run_closure() -> dict[str, str]:
    """Every distribution `pip install .` brings (name -> who requires it): pyproject.toml's
    dependencies, then each installed one's own requirements, extras as requested."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pending = [(Requirement(text), "pyproject.toml") for text in project["dependencies"]]
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    while pending:
        requirement, parent = pending.pop()
        name = canonicalize_name(requirement.name)
        for extra in requirement.extras or {""}:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            found.setdefault(name, parent)
            try:
                requires = distribution(name).requires or []
            except PackageNotFoundError:
                raise AssertionError(f"{name} (required by {parent}) is not installed: run `make install`") from None
            for text in requires:
                child = Requirement(text)
                if child.marker is None or child.marker.evaluate({"extra": extra}):
                    pending.append((child, name))
    return found


def test_the_run_dependencies_pull_no_cuda_library() -> None:
    closure = run_closure()
    assert "xgboost-cpu" in closure, "the demo tourism-monthly model needs XGBoost (its CPU build)"
    cuda = {name: parent for name, parent in closure.items() if is_cuda(name)}
    assert not cuda, f"CUDA distributions in the run install (name: required by): {cuda}"


def test_no_nvidia_distribution_is_installed() -> None:
    """Catches what the closure does not see, e.g. a dev or bench extra pulling CUDA, or a
    venv that still has the CUDA build of xgboost from before (`make install` replaces it)."""
    installed = sorted({d.metadata["Name"] for d in distributions() if is_cuda(d.metadata["Name"])})
    assert not installed, f"installed CUDA distributions: {installed}"


def test_xgboost_imports_and_manifests_record_its_version() -> None:
    """The CPU build is imported as `xgboost`; manifests record its version under that name."""
    import xgboost

    assert library_versions()["xgboost"] == xgboost.__version__
