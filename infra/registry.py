"""The model registry: one registered model per method, promotion to ``@champion`` only when the metric improves.

A version is a run's ``model/`` artefact folder (plain state dicts + a config JSON, loaded by our own code), registered
with ``MlflowClient.create_model_version(source=<run artefact URI>)``. We do not use ``mlflow.pytorch.log_model``:
it costs ~12 s per call here (stack notes) and would wrap our checkpoints in an MLmodel flavour nobody loads.

Promotion follows reliability notes §2.4 #24: stages are deprecated (mlflow#10336), so the champion is an alias;
registration is idempotent by the tag ``vlrepro.run_key`` (a retried flow task finds its version instead of adding
another); each version carries its evaluation metric as tags, and ``@champion`` moves only if the new value strictly
beats the current champion's. Registration of one model name is assumed to be serialised (one flow driver); two
racing registrations of the *same* run key still converge on the lowest version number.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.tracking import RUN_KEY_TAG, Tracker

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION = "champion"
METRIC_NAME_TAG = "vlrepro.metric_name"
METRIC_VALUE_TAG = "vlrepro.metric_value"
HIGHER_IS_BETTER_TAG = "vlrepro.higher_is_better"
MODEL_ARTIFACT_PATH = "model"

# Names and run keys go into filter strings between single quotes (MLflow's grammar has no escape for them).
_SAFE_NAME = re.compile(r"^[\w.:/@+=-]{1,250}$")
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?$")


def _check(value: str, what: str) -> str:
    if not _SAFE_NAME.match(value):
        raise ValueError(f"{what} {value!r} must match {_SAFE_NAME.pattern}")
    return value


def beats(new: float, old: float, higher_is_better: bool = True) -> bool:
    """Strict improvement; NaN never wins and is never beaten-by-default (a NaN champion is replaced)."""
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new > old if higher_is_better else new < old


def _local_files(local_dir: Path) -> dict[str, int]:
    return {p.relative_to(local_dir).as_posix(): p.stat().st_size for p in local_dir.rglob("*") if p.is_file()}


_REGISTER_LOCK = threading.Lock()


class Registry:
    """Registered models of one tracking backend (the `Tracker`'s client and URI)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.client = tracker.client

    # -- registration -----------------------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        run_id: str,
        local_dir: str | Path,
        metric_name: str,
        metric_value: float,
        run_key: str,
        higher_is_better: bool = True,
        description: str = "",
    ) -> dict[str, Any]:
        """Register `local_dir` (from run `run_id`) as a version of `name`; promote it if its metric is better.

        Returns ``{"name", "version", "promoted", "champion_version", "metric"}`` where ``promoted`` says whether this
        version holds ``@champion`` after the call, so calling twice with the same `run_key` returns the same dict.
        A version already registered for `run_key` is reused with its *stored* metric (the first registration wins).
        """
        _check(name, "model name")
        _check(run_key, "run key")
        with _REGISTER_LOCK:  # jobs of one DAG finish in parallel threads: compare-and-move @champion atomically
            return self._register(
                name, run_id, local_dir, metric_name, metric_value, run_key, higher_is_better, description
            )

    def _register(
        self,
        name: str,
        run_id: str,
        local_dir: str | Path,
        metric_name: str,
        metric_value: float,
        run_key: str,
        higher_is_better: bool,
        description: str,
    ) -> dict[str, Any]:
        self._ensure_model(name, metric_name, higher_is_better)
        version = self._version_for_key(name, run_key)
        if version is None:
            self._upload(run_id, Path(local_dir))
            created = self.client.create_model_version(
                name,
                source=self.tracker.artifact_uri(run_id, MODEL_ARTIFACT_PATH),
                run_id=run_id,
                tags={
                    RUN_KEY_TAG: run_key,
                    METRIC_NAME_TAG: metric_name,
                    METRIC_VALUE_TAG: repr(float(metric_value)),
                    HIGHER_IS_BETTER_TAG: str(higher_is_better).lower(),
                },
                description=description or None,
            )
            version = self._version_for_key(name, run_key) or created  # a racing twin: keep the lowest version
            if int(version.version) != int(created.version):
                log.warning("model %s: run key %s already registered as v%s", name, run_key, version.version)
                self.client.delete_model_version(name, str(created.version))
        metric = float(version.tags[METRIC_VALUE_TAG])
        self._check_metric(name, version, metric_name)

        current = self.champion(name)
        if current is not None and current["metric_name"] != metric_name:
            raise ValueError(f"cannot compare {metric_name!r} with the champion's {current['metric_name']!r}")
        if current is None:
            move = not math.isnan(metric)  # a NaN evaluation never becomes the champion
        else:
            move = current["version"] != int(version.version) and beats(metric, current["metric"], higher_is_better)
        if move:
            self.client.set_registered_model_alias(name, CHAMPION, str(version.version))
            current = self.champion(name)
        champion_version = None if current is None else current["version"]
        return {
            "name": name,
            "version": int(version.version),
            "promoted": champion_version == int(version.version),
            "champion_version": champion_version,
            "metric": metric,
        }

    def _ensure_model(self, name: str, metric_name: str, higher_is_better: bool) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                name,
                tags={METRIC_NAME_TAG: metric_name, HIGHER_IS_BETTER_TAG: str(higher_is_better).lower()},
            )
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            tags = self.client.get_registered_model(name).tags
            stored = (tags.get(METRIC_NAME_TAG), tags.get(HIGHER_IS_BETTER_TAG))
            if stored[0] is not None and stored != (metric_name, str(higher_is_better).lower()):
                raise ValueError(
                    f"model {name!r} ranks versions by {stored[0]!r} (higher_is_better={stored[1]}); "
                    f"got {metric_name!r} (higher_is_better={str(higher_is_better).lower()})"
                ) from None

    @staticmethod
    def _check_metric(name: str, version: ModelVersion, metric_name: str) -> None:
        stored = version.tags.get(METRIC_NAME_TAG)
        if stored != metric_name:
            raise ValueError(f"{name} v{version.version} was registered with metric {stored!r}, not {metric_name!r}")

    def _version_for_key(self, name: str, run_key: str) -> ModelVersion | None:
        versions = self.client.search_model_versions(f"name = '{name}' and tags.`{RUN_KEY_TAG}` = '{run_key}'")
        return min(versions, key=lambda v: int(v.version)) if versions else None

    def _upload(self, run_id: str, local_dir: Path) -> None:
        """Log `local_dir` under the run's ``model/``, unless exactly those files (names and sizes) are there."""
        if not local_dir.is_dir():
            raise FileNotFoundError(f"model folder {local_dir} does not exist")
        local = _local_files(local_dir)
        if not local:
            raise ValueError(f"model folder {local_dir} is empty")
        if self._remote_files(run_id, MODEL_ARTIFACT_PATH) != local:  # absent, or partial after a crash: (re)upload
            self.client.log_artifacts(run_id, str(local_dir), MODEL_ARTIFACT_PATH)

    def _remote_files(self, run_id: str, path: str) -> dict[str, int]:
        out: dict[str, int] = {}
        stack = [path]
        while stack:
            for info in self.client.list_artifacts(run_id, stack.pop()):
                if info.is_dir:
                    stack.append(info.path)
                else:
                    out[info.path[len(path) + 1 :]] = int(info.file_size or 0)
        return out

    # -- lookup and download ----------------------------------------------------------------------------------------

    def champion(self, name: str) -> dict[str, Any] | None:
        """``{"name", "version", "metric", "metric_name", "run_id", "run_key", "source"}`` of ``@champion``, or None."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        if METRIC_VALUE_TAG not in version.tags:
            # someone pointed the alias at a version we did not register; refusing beats guessing (notes #24)
            raise ValueError(f"{name}@{CHAMPION} (v{version.version}) has no {METRIC_VALUE_TAG} tag to compare against")
        return {
            "name": name,
            "version": int(version.version),
            "metric": float(version.tags[METRIC_VALUE_TAG]),
            "metric_name": version.tags.get(METRIC_NAME_TAG),
            "run_id": version.run_id,
            "run_key": version.tags.get(RUN_KEY_TAG),
            "source": version.source,
        }

    def resolve(self, model_uri: str) -> ModelVersion:
        """The version a ``models:/name@alias`` or ``models:/name/version`` URI points at."""
        match = _MODEL_URI.match(model_uri)
        if match is None:
            raise ValueError(f"expected models:/<name>@<alias> or models:/<name>/<version>, got {model_uri!r}")
        if match["alias"]:
            return self.client.get_model_version_by_alias(match["name"], match["alias"])
        return self.client.get_model_version(match["name"], match["version"])

    def download(self, model_uri: str, dst: str | Path) -> Path:
        """Download the files of the version `model_uri` points at into folder `dst` (replaced whole); returns `dst`.

        Resolved through our client: ``mlflow.artifacts.download_artifacts("models:/…")`` would consult the *global*
        registry URI (``./mlflow.db`` in the CWD by default), not this run root's.
        """
        from mlflow.artifacts import download_artifacts

        version = self.resolve(model_uri)
        source = self.client.get_model_version_download_uri(version.name, str(version.version))
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        try:
            local = download_artifacts(
                artifact_uri=source, dst_path=str(staging), tracking_uri=self.tracker.uri, registry_uri=self.tracker.uri
            )
            if dst.exists():  # a folder from an older download must not mix its files into this version's
                shutil.rmtree(dst)
            Path(local).rename(dst)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dst
