"""Studies: experiments made of many runs (sweeps, loss landscapes), run by ``sciml run``.

A study config names a function under ``sciml.studies`` and its arguments::

    name: lpinn_sweep
    study: sciml.studies.lpinn.sweep      # function(out: Path, quick: bool, **args) -> dict
    args: {speeds: [0, 2, 5]}
    quick: {speeds: [5, 30]}              # argument overrides applied by --quick

The function trains and evaluates what it needs, writes its tables and plots into ``out`` and
returns the content of ``metrics.json``, which is written last (its presence means complete).
Command-line overrides ``key=value`` set arguments (``args.key=value`` works too).

A study whose function has a ``reevaluate(out, **args)`` attribute can be evaluated again from
its trained runs (``sciml evaluate STUDY_DIR``), for example after a fix to the evaluation.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .._io import atomic_write, atomic_write_json, atomic_write_text
from ..errors import ConfigError, did_you_mean

ModelSpec = str | Mapping[str, Any]

_KEYS = ("name", "description", "study", "args", "quick", "seed", "threads")


def is_study(raw: dict) -> bool:
    return "study" in raw


def _study_function(target: str, where: Path):
    module_name, _, fn_name = target.rpartition(".")
    if not module_name.startswith("sciml.studies"):
        raise ConfigError(f"`study` (={target!r}) in {where} must name a function under sciml.studies, e.g. sciml.studies.lpinn.sweep.")
    try:
        return getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"`study` (={target!r}) in {where} cannot be imported ({exc}).") from exc


def run_study(path: Path, raw: dict, out: Path | None, quick: bool, overrides: Sequence[str]) -> dict[str, Any]:
    from ..config import parse_override
    from ..pipeline import default_out, set_threads

    if unknown := [k for k in raw if k not in _KEYS]:
        raise ConfigError(f"unknown key {unknown[0]!r} in the study {path}.{did_you_mean(unknown[0], _KEYS)} A study has {', '.join(_KEYS)}.")
    target = str(raw["study"])
    fn = _study_function(target, path)
    args = dict(raw.get("args") or {})
    changes = dict(raw.get("quick") or {}) if quick else {}
    for item in overrides:
        key, value = parse_override(item, example="args.speeds=[5,30]")
        try:
            changes[key.removeprefix("args.")] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"the override {item!r} is not a YAML value ({_one_line(exc)}); e.g. args.speeds=[5,30].") from None
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("out", "quick")]
    for key, value in changes.items():
        if key not in allowed:
            raise ConfigError(f"{target} has no argument {key!r}.{did_you_mean(key, allowed)} Its arguments are {', '.join(allowed)}.")
        args[key] = value
    if isinstance(args.get("models"), Mapping):
        args["models"] = _resolve_models(args["models"], path)
    name = str(raw.get("name", ""))
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"`name` (={name!r}) in {path} names the run folder runs/NAME: give a plain folder name.")
    out = Path(out) if out else default_out(name, quick)
    threads, seed = raw.get("threads", 1), raw.get("seed", 0)
    for key, value in (("threads", threads), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"`{key}` (={value!r}) in {path} must be an integer >= 0.")
    try:
        inspect.signature(fn).bind(out=out, quick=quick, **args)
    except TypeError as exc:
        raise ConfigError(f"{target}: {exc}. Check the study's `args` in {path}.") from exc
    set_threads(threads)
    import lightning as L

    L.seed_everything(seed, workers=True, verbose=False)
    resolved = {k: v for k, v in raw.items() if k != "quick"} | {"args": args}
    out.mkdir(parents=True, exist_ok=True)
    before = {f: (out / f).read_bytes() for f in ("metrics.json", "config.yaml") if (out / f).is_file()}
    (out / "metrics.json").unlink(missing_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    try:
        result = fn(out=out, quick=quick, **args)
    except ConfigError:  # an argument the study itself refused: the previous study's files stay as they were
        for f, content in before.items():
            atomic_write(out / f, lambda fh, content=content: fh.write(content))
        if "config.yaml" not in before:
            (out / "config.yaml").unlink(missing_ok=True)
        raise
    report = _with_provenance({"experiment": name, **result}, out)
    atomic_write_json(out / "metrics.json", report)
    return report


def evaluate_study(run_dir: Path, raw: dict) -> dict[str, Any]:
    """Evaluate a finished study again from its runs (its ``config.yaml`` holds the resolved
    arguments), where the study's function has a ``reevaluate``; metrics.json is replaced last."""
    fn = _study_function(str(raw.get("study")), run_dir / "config.yaml")
    reevaluate = getattr(fn, "reevaluate", None)
    if reevaluate is None:
        runs = sorted(str(p.parent) for p in run_dir.glob("**/config.yaml") if p.parent != run_dir)
        raise ConfigError(f"{run_dir} is the folder of a study (several runs) that cannot be evaluated as a whole; evaluate one of its runs"
                          f"{': ' + ', '.join(runs) if runs else ''}, or rerun the study with `sciml run`.")
    from ..pipeline import set_threads

    args = dict(raw.get("args") or {})
    try:
        inspect.signature(reevaluate).bind(out=run_dir, **args)
    except TypeError as exc:
        raise ConfigError(f"{run_dir / 'config.yaml'}: its `args` do not fit {raw.get('study')} ({exc}); rerun the study with `sciml run`.") from exc
    set_threads(raw.get("threads", 1))
    report = _with_provenance({"experiment": str(raw.get("name", "")), **reevaluate(out=run_dir, **args)}, run_dir)
    atomic_write_json(run_dir / "metrics.json", report)
    return report


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _resolve_models(models: Mapping[str, Any], study: Path) -> dict[str, Any]:
    """The study's model experiment files, found from anywhere: a relative path as given (from
    the working directory) or, failing that, from the study file's folder or one of its parents
    (the shipped studies name files from the project root, e.g. experiments/lpinn/...)."""
    def find(config: str) -> str:
        given = Path(config)
        if given.is_absolute() or given.exists():
            return config
        for folder in Path(study).resolve().parents:
            if (folder / given).exists():
                return str(folder / given)
        return config  # not found anywhere: run_experiment names it

    resolved: dict[str, Any] = {}
    for name, spec in models.items():
        if isinstance(spec, str):
            resolved[name] = find(spec)
        elif isinstance(spec, Mapping) and isinstance(spec.get("config"), str):
            resolved[name] = {**spec, "config": find(spec["config"])}
        else:
            resolved[name] = spec  # model_specs names what is wrong with it
    return resolved


def _with_provenance(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """The study's report with metrics.json's ``device`` and ``versions`` where its function
    left them out: the devices its runs (``out/*/metrics.json``) report, else this host's."""
    import json

    from ..pipeline import host_device, versions

    if "device" not in report:
        devices = []
        for path in sorted(out.glob("*/metrics.json")):
            try:
                device = json.loads(path.read_text()).get("device")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(device, str) and device not in devices:
                devices.append(device)
        report["device"] = "; ".join(devices) if devices else host_device()
    report.setdefault("versions", versions())
    return report


def model_specs(models: Mapping[str, ModelSpec]) -> dict[str, tuple[str, list[str]]]:
    """{name: (experiment file, overrides)} from the study's ``models`` argument."""
    if not isinstance(models, Mapping) or not models:
        raise ConfigError(f"`models` (={models!r}) must map model names to experiment files, e.g. {{lpinn: experiments/lpinn/convection_c30.yaml}}.")
    specs = {}
    for name, spec in models.items():
        if isinstance(spec, str):
            specs[str(name)] = (spec, [])
        elif isinstance(spec, Mapping) and isinstance(spec.get("config"), str) and set(spec) <= {"config", "overrides"}:
            specs[str(name)] = (spec["config"], [str(o) for o in spec.get("overrides") or []])
        else:
            raise ConfigError(f"`models.{name}` (={spec!r}) must be an experiment file or {{config: FILE, overrides: [key=value, ...]}}.")
    return specs
