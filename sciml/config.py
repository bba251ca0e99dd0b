"""Experiment configs: typed and validated by jsonargparse from the classes' signatures.

An experiment YAML has the keys::

    name: convection_beta5          # the run folder's default name
    seed: 0
    pde:   {class_path: sciml.pdes.Convection, init_args: {beta: 5.0}}
    data:  {class_path: sciml.data.CollocationDataModule, init_args: {...}}   # gets the pde
    model: {class_path: sciml.models.PINN, init_args: {...}}                  # gets the pde
    trainer: {...}                  # lightning.Trainer arguments
    quick: {trainer.max_steps: 20}  # dotted overrides applied by --quick

Command-line overrides are ``key=value`` with dotted keys (``model.init_args.hidden=[32,32]`` or
the short ``model.hidden=[32,32]``). Every problem becomes a :class:`ConfigError` whose message
names the key, the value and the fix, with a did-you-mean suggestion for unknown keys.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from .errors import ConfigError
from .pdes import PDE

# Trainer arguments that the pipeline owns (it sets run folders, loggers and callbacks itself).
_TRAINER_SKIP = {"callbacks", "logger", "default_root_dir", "enable_checkpointing", "enable_progress_bar", "enable_model_summary", "plugins"}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sciml run", exit_on_error=False, allow_abbrev=False, default_meta=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--name", type=str, required=True, help="experiment name (default run folder)")
    parser.add_argument("--description", type=str, default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_subclass_arguments(PDE, "pde", required=True)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    parser.add_subclass_arguments(L.LightningModule, "model", required=True)
    # The PDE is built once and handed to both (PDEs are data shared by data and model).
    parser.link_arguments("pde", "data.init_args.pde", apply_on="instantiate")
    parser.link_arguments("pde", "model.init_args.pde", apply_on="instantiate")
    parser.add_class_arguments(L.Trainer, "trainer", skip=_TRAINER_SKIP)
    parser.add_argument("--quick", type=dict[str, Any], default={}, help="overrides applied by --quick")
    return parser


def parse_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key or key.startswith("-"):
        raise ConfigError(f"override {item!r} is not of the form key=value (for example trainer.max_steps=100).")
    return key.strip(), value


def load_config(path: str | Path, overrides: Sequence[str] = (), quick: bool = False) -> tuple[ArgumentParser, Namespace]:
    """Parse and validate an experiment file plus ``key=value`` overrides (and ``quick`` ones)."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        here = sorted(str(p) for p in Path("experiments").rglob("*.yaml")) if Path("experiments").is_dir() else []
        close = difflib.get_close_matches(str(path), here, n=1, cutoff=0.5)
        if close:
            hint = f" Did you mean {close[0]}?"
        raise ConfigError(f"experiment file {str(path)!r} does not exist.{hint} The experiments shipped are under experiments/.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys (name, pde, data, model, trainer), not {type(raw).__name__}.")
    parser = build_parser()
    pairs = [parse_override(o) for o in overrides]
    if quick:
        pairs = [(k, _to_cli_value(v)) for k, v in (raw.get("quick") or {}).items()] + pairs
    args = ["--config", str(path)] + [f"--{k}={v}" for k, v in pairs]
    try:
        cfg = parser.parse_args(args)
    except Exception as exc:  # jsonargparse raises ArgumentError, ValueError, TypeError, ...
        raise ConfigError(explain(parser, exc, source=str(path))) from exc
    return parser, cfg


def instantiate(parser: ArgumentParser, cfg: Namespace) -> Namespace:
    """Build the PDE, data module and model; constructor errors become ConfigErrors."""
    try:
        init = parser.instantiate_classes(cfg)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid experiment config: {_clean(str(exc))}") from exc
    return init


def dump_config(parser: ArgumentParser, cfg: Namespace) -> str:
    return parser.dump(cfg, skip_none=False)


def _to_cli_value(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


# -- turning jsonargparse's errors into one paragraph ------------------------------------------
def known_keys(parser: ArgumentParser, cfg_keys: Sequence[str] = ()) -> list[str]:
    keys = [k for k in parser.get_defaults().keys() if k != "config"]
    return sorted(set(keys) | set(cfg_keys))


def _suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


def _init_args_of(class_path: str) -> list[str]:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except Exception:
        return []
    return [p for p in inspect.signature(cls).parameters if p not in ("self", "pde")]


def _clean(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines()]
    noise = ("Expected a <class 'NoneType'>", "Expected a <class 'dict'>", "Subtypes:", "Given value type:", "Errors:", "Does not validate against any of the Union subtypes")
    kept = [ln.lstrip("- ").strip() for ln in lines if ln and not any(ln.lstrip("- ").startswith(n) for n in noise)]
    return " ".join(kept)


def explain(parser: ArgumentParser, exc: BaseException, source: str = "") -> str:
    """A one-paragraph message for a parse failure: which key, what was wrong, what to do."""
    text = str(exc)
    keys = known_keys(parser)
    where = f" (in {source} or the overrides)" if source else ""
    m = re.search(r"unrecognized arguments: --([\w.]+)", text)
    if m:
        key = m.group(1)
        return f"unknown key `{key}`{where}.{_suggest(key, keys)} Known top-level keys: name, description, seed, pde, data, model, trainer, quick."
    m = re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", text)
    if m:
        group, opt = m.groups()
        key = f"{group}.{opt}"
        return f"unknown key `{key}`{where}.{_suggest(key, keys)}"
    m = re.search(r"Option '(\w+)' is not accepted", text)
    pk = re.search(r'Parser key "([\w.]+)"', text)
    if m:
        opt = m.group(1)
        key = f"{pk.group(1)}.{opt}" if pk else opt
        cp = re.search(r"given class_path '([\w.]+)'", text)
        options = _init_args_of(cp.group(1)) if cp else []
        hint = _suggest(opt, options)
        valid = f" Valid keys there: {', '.join(options)}." if options else ""
        return f"unknown key `{key}`{where}.{hint}{valid}"
    m = re.search(r"Key \"([\w.]+)\" is required but not included", text) or re.search(r'"([\w.]+)" is required', text)
    if m:
        return f"the required key `{m.group(1)}` is missing{where}; add it to the experiment file (see experiments/ for examples)."
    if pk:
        key = pk.group(1)
        body = _clean(text.split(":", 1)[1] if ":" in text else text)
        return f"invalid value for `{key}`{where}: {body} Fix the value in the file or with {key}=<value>."
    return f"invalid experiment config{where}: {_clean(text)}"
