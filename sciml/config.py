"""Experiment configs: typed and validated by jsonargparse from the classes' signatures.

An experiment YAML has the keys::

    name: convection_beta5          # the run folder's default name
    seed: 0
    pde:   {class_path: sciml.pdes.Convection, init_args: {beta: 5.0}}
    data:  {class_path: sciml.data.CollocationDataModule, init_args: {...}}   # gets the pde
    model: {class_path: sciml.models.PINN, init_args: {...}}                  # gets the pde
    trainer: {...}                  # lightning.Trainer arguments
    quick: {trainer.max_steps: 20}  # dotted overrides applied by --quick (then emptied, so that
                                    # the resolved config of a quick run is that run, --quick or not)

Command-line overrides are ``key=value`` with dotted keys (``model.init_args.hidden=[32,32]`` or
the short ``model.hidden=[32,32]``). Every problem becomes a :class:`ConfigError` whose message
names the key, the value and the fix, with a did-you-mean suggestion for unknown keys.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from .errors import ConfigError, SciMLError, did_you_mean, did_you_mean_file
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
    # Validated here, built by the pipeline (which adds the run folder's logger and callbacks).
    parser.add_class_arguments(L.Trainer, "trainer", skip=_TRAINER_SKIP, instantiate=False)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch; 0: torch's default (all cores)")
    parser.add_argument("--quick", type=dict[str, Any], default={}, help="overrides applied by --quick")
    return parser


def parse_override(item: str, example: str = "trainer.max_steps=100") -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or key.startswith("-"):
        raise ConfigError(f"{item!r} is not of the form key=value (for example {example}).")
    return key.strip(), value


def load_config(path: str | Path, overrides: Sequence[str] = (), quick: bool = False) -> tuple[ArgumentParser, Namespace]:
    """Parse and validate an experiment file plus ``key=value`` overrides (and ``quick`` ones)."""
    raw = read_yaml(Path(path))
    parser = build_parser()
    pairs = [parse_override(o) for o in overrides]
    if quick:
        shrink = raw.get("quick") or {}
        if not isinstance(shrink, dict):
            raise ConfigError(f"`quick` in {path} must be a mapping of dotted keys to values "
                              f"(e.g. quick: {{trainer.max_steps: 20}}), not {shrink!r}.")
        pairs = [(k, _to_cli_value(v)) for k, v in shrink.items()] + pairs
    args = ["--config", str(path)] + [f"--{k}={v}" for k, v in pairs]
    try:
        cfg = parser.parse_args(args)
    except Exception as exc:  # jsonargparse raises ArgumentError, ValueError, TypeError, ...
        raise ConfigError(explain(parser, exc, source=str(path))) from exc
    if quick:
        cfg.quick = {}  # applied: the resolved config is the quick run, and --quick on it a no-op
    if cfg.threads < 0:
        raise ConfigError(f"`threads` (={cfg.threads}) must be >= 0 (0: torch's default, all cores; 1: best for PINN-sized models).")
    if not re.fullmatch(r"[\w.+-]+", cfg.name or "") or cfg.name in (".", ".."):
        raise ConfigError(f"`name` (={cfg.name!r}) in {path} names the run folder runs/NAME: give a "
                          "non-empty name of letters, digits and . _ + - (e.g. name: convection_beta5).")
    return parser, cfg


def read_yaml(path: Path) -> dict:
    """The experiment file as a mapping; a missing, unreadable or malformed file is a ConfigError."""
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give an experiment file inside it, e.g. experiments/quickstart.yaml.")
    if not path.is_file():
        hint = did_you_mean_file(path, also_under=["experiments"])
        raise ConfigError(f"experiment file {str(path)!r} does not exist.{hint} The experiments shipped are under experiments/.")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the experiment file {path} ({exc}); give a readable YAML text file.") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise ConfigError(f"{path} is not valid YAML{at}: {problem}. Fix the syntax there (a missing bracket, quote or indent?).") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys (name, pde, data, model, trainer), not {type(raw).__name__}; see experiments/quickstart.yaml.")
    return raw


def instantiate(parser: ArgumentParser, cfg: Namespace) -> Namespace:
    """Build the PDE, data module and model; constructor errors become ConfigErrors."""
    try:
        return parser.instantiate_classes(cfg)
    except SciMLError:
        raise
    except (ValueError, TypeError) as exc:
        root, section = _constructor_error(exc)
        if isinstance(root, SciMLError) and not isinstance(root, ConfigError):
            raise root from exc  # e.g. a DataError, whose message has its own fix
        where = f"`{section}`" if section else "the experiment config"
        fix = f" Fix it in the experiment file or with an override such as {section}.KEY=VALUE." if section else ""
        raise ConfigError(f"invalid value in {where}: {_one_line(str(root)).rstrip('.')}.{fix}") from exc


def dump_config(parser: ArgumentParser, cfg: Namespace) -> str:
    return parser.dump(cfg, skip_none=False)


def _to_cli_value(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


# -- turning jsonargparse's errors into one paragraph ------------------------------------------
# jsonargparse reports a failure as nested text: `Parser key "model"` -> `Problem with given
# class_path 'sciml.models.PINN'` -> `Parser key "hidden"` -> the leaf problem, with the other
# members of each Union (`Expected a <class 'NoneType'>`) and the given values around it.
_TOP_LEVEL = ("name", "description", "seed", "threads", "pde", "data", "model", "trainer", "quick")
_SECTIONS = {"PDE": "pde", "LightningDataModule": "data", "LightningModule": "model"}
_IMPORT_FAILURES = ("has no attribute", "No module named", "cannot import")
_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given class_path", "Parser key")


def known_keys(parser: ArgumentParser) -> list[str]:
    return sorted(k for k in parser.get_defaults().keys() if k != "config")


def explain(parser: ArgumentParser, exc: BaseException, source: str = "") -> str:
    """A one-paragraph message for a parse failure: which key, what was wrong, what to do."""
    text = str(exc)
    where = f" (in {source} or the overrides)" if source else ""
    m = re.search(r"unrecognized arguments: --([\w.]+)", text) or re.search(r"Option '([\w.]+)' is not accepted", text)
    if m and not text.startswith("Parser key"):
        return _unknown_key(m.group(1), known_keys(parser), where)
    m = re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", text)
    if m:
        return _unknown_key(".".join(m.groups()), known_keys(parser), where)
    path: list[str] = []
    class_path = ""
    for line in text.splitlines():
        item = line.strip().removeprefix("- ")
        if m := re.match(r'Parser key "([\w.]+)"', item):
            path.append(m.group(1))
        elif m := re.match(r"Problem with given class_path '([\w.]+)'", item):
            class_path = m.group(1)
        if any(marker in item for marker in _IMPORT_FAILURES):
            return _bad_class(".".join(path), class_path, where)
        if m := re.match(r"Option '([\w.]+)' is not accepted", item):
            options = _init_args_of(class_path)
            return _unknown_key(".".join([*path, m.group(1)]), [".".join([*path, o]) for o in options], where, valid=options)
        elif m := re.match(r"Expected a (.+?)\. Got value: (.*)", item):
            return _wrong_type(".".join(path), [m.group(1)], m.group(2), where)
    if path:
        expected = [e for e in re.findall(r"- Expected a (.+)", text) if "NoneType" not in e]
        given = re.findall(r"Given value: (.*)", text)
        return _wrong_type(".".join(path), expected, given[-1] if given else "?", where)
    return f"invalid experiment config{where}: {_one_line(text)}"


def _unknown_key(key: str, candidates: Sequence[str], where: str, valid: Sequence[str] = ()) -> str:
    top = key.split(".")[0]
    if top not in _TOP_LEVEL:
        hint = did_you_mean(top, _TOP_LEVEL)
        return f"unknown top-level key `{top}`{where}.{hint} The top-level keys are {', '.join(_TOP_LEVEL)}."
    listed = f" Valid keys there: {', '.join(valid)}." if valid else ""
    return f"unknown key `{key}`{where}.{did_you_mean(key, candidates)}{listed}"


def _wrong_type(key: str, expected: Sequence[str], given: str, where: str) -> str:
    wanted = " or ".join(dict.fromkeys(_describe_type(t) for t in expected)) or "another value"
    if m := re.fullmatch(r"NestedArg\(key='[^']*', val='(.*)'\)", given):  # jsonargparse's wrapper of an override
        given = m.group(1)
    hint = ""
    if given.startswith("{") and re.search(r":\S", given):
        hint = " A YAML mapping needs a space after each colon, e.g. {nx: 256, nt: 51}."
    return (f"invalid value for `{key}`{where}: expected {wanted}, got {given!r}.{hint} "
            f"Fix it in the experiment file or override it with {key}=VALUE.")


def _describe_type(typehint: str) -> str:
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "dict": "a mapping",
             "list": "a list", "tuple": "a list", "collections.abc.Sequence": "a list such as [32, 32]"}
    if m := re.fullmatch(r"<class '([\w.]+)'>", typehint):
        return names.get(m.group(1), f"a {m.group(1).rsplit('.', 1)[-1]}")
    if m := re.fullmatch(r"typing\.Literal\[(.*)\]", typehint):
        return f"one of {m.group(1)}"
    return typehint


def _bad_class(key: str, class_path: str, where: str) -> str:
    module = class_path.rpartition(".")[0]
    try:
        mod = importlib.import_module(module)
        names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]  # __all__: lazy ones too
        options = [f"{module}.{n}" for n in names if inspect.isclass(getattr(mod, n, None))]
    except ImportError:
        options = []
    return (f"`{key}.class_path` (={class_path!r}){where} is not an importable class.{did_you_mean(class_path, options)} "
            f"Give the full dotted path of a class, as in experiments/quickstart.yaml.")


def _init_args_of(class_path: str) -> list[str]:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    return [p for p in inspect.signature(cls).parameters if p not in ("self", "pde")]


def _constructor_error(exc: BaseException) -> tuple[BaseException, str]:
    """The constructor's own exception under jsonargparse's wrappers, and the config section
    (pde, data, model) whose class raised it, or "" if unknown."""
    m = re.search(r"Subtypes: \[<class '[\w.]*?(\w+)'>", str(exc))
    section = _SECTIONS.get(m.group(1), "") if m else ""
    root = exc
    while root.__cause__ is not None and str(root).startswith(_WRAPPERS):
        root = root.__cause__
    return root, section


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.split("Given value:")[0].splitlines() if line.strip())
