"""What the CLI says when a config is wrong, and the help of the edit's settings groups.

jsonargparse reports a mistake inside a plugin's settings as nested "Does not validate against any
of the Union subtypes" text after a full usage dump. `explain` reduces that to one line: the key,
where it was given (file and line, or the command line) and the nearest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import Optional

import yaml

from framework.core.errors import ConfigError, EditNote, EditWarning
from framework.io.manifests import yaml_problem

_KEY = re.compile(r'Parser key "([^"]+)":')
_CLASS = re.compile(r"Problem with given class_path '([^']+)':")
_UNKNOWN = re.compile(r"Option '([^']+)' is not accepted")
_GROUP = re.compile(r"Group '([^']+)' does not accept option '([^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: --?([\w.]+)")
_NO_ATTRIBUTE = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")
_EXPECTED = re.compile(r"Expected a (.+)")
_GIVEN = re.compile(r"Given value: (.+)")
_STRUCTURE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
              "Expected a path but")


# ------------------------------------------------------------------------------ warnings
class WarningLines:
    """While the CLI runs: each of the project's warnings (EditWarning) is one `warning: ...` (or `note: ...`) line
    on stderr, without Python's file path and source echo, and is appended to the run's log, `<output_dir>/run.log`,
    once the output folder is known (`open_log`); lines from before that are kept and written then. Other code's
    warnings pass on to the handler that was there before, unchanged."""

    def __init__(self) -> None:
        self.log_path: Optional[Path] = None
        self.pending: list[str] = []
        self._catch = warnings.catch_warnings()
        self._previous = warnings.showwarning

    def __enter__(self) -> "WarningLines":
        self._catch.__enter__()  # restores the filters and the handler on exit (the CLI may run in a test process)
        self._previous = warnings.showwarning
        warnings.showwarning = self.show
        # Each is said once per request or run already; Python's once-per-source-line registry would hide the
        # same line from a second run in one process.
        warnings.simplefilter("always", EditWarning)
        return self

    def __exit__(self, *exc) -> None:
        self._catch.__exit__(*exc)

    def show(self, message, category, filename, lineno, file=None, line=None) -> None:
        if not issubclass(category, EditWarning):
            self._previous(message, category, filename, lineno, file, line)
            return
        text = f"{'note' if issubclass(category, EditNote) else 'warning'}: {' '.join(str(message).split())}"
        sys.stderr.write(text + "\n")
        self.record(text)

    def record(self, text: str) -> None:
        """Append one line (time-stamped) to the run's log, or keep it until the log is opened."""
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        if self.log_path is None:
            self.pending.append(stamped)
        else:
            self._write([stamped])

    def _write(self, lines: list[str]) -> None:
        try:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.writelines(line + "\n" for line in lines)
        except OSError:
            pass  # a log that cannot be written must not stop the edits; the lines are on stderr already

    def open_log(self, folder: Path) -> None:
        """Start writing to `<folder>/run.log` (appending: a resumed run's lines follow the earlier run's)."""
        self.log_path = Path(folder) / "run.log"
        pending, self.pending = self.pending, []
        if pending:
            self._write(pending)


# ------------------------------------------------------------------------------ YAML files
def config_files(args: list[str]) -> list[Path]:
    """The `--config FILE` arguments of a command line."""
    files = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            files.append(Path(args[i + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    return files


def check_yaml_files(files: list[Path]) -> None:
    """Each config file parses as YAML; else one ConfigError naming the file, line and column."""
    for path in files:
        if not path.is_file():
            continue  # jsonargparse names a missing file itself
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(yaml_problem(path, err)) from None


# ------------------------------------------------------------------------- names and places
def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def init_parameters(cls) -> list[str]:
    """Names a class accepts as init_args, following `**kwargs` up its bases as jsonargparse does."""
    names: list[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def group_fields(cls, group: str) -> list[str]:
    """Field names of the dataclass that parameter `group` of `cls` takes (e.g. EditModule.sampling)."""
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hint = typing.get_type_hints(init).get(group)
        except Exception:  # noqa: BLE001 - unresolvable annotations: no suggestions
            return []
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate):
                return [f.name for f in dataclasses.fields(candidate)]
    return []


def module_classes(module_name: str) -> list[str]:
    """Public classes of a module, as `module.Name`."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    names = dict.fromkeys([*vars(module), *getattr(module, "__all__", [])])  # __all__: lazily exported names too
    return [f"{module_name}.{n}" for n in names if not n.startswith("_") and inspect.isclass(getattr(module, n, None))]


def nearest(word: str, names: list[str], prefix: str = "") -> str:
    """'; did you mean X?' with the closest names, or the valid names when none is close."""
    close = difflib.get_close_matches(word, names, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(prefix + c for c in close)}?"
    if names:
        shown = ", ".join(prefix + n for n in names[:12])
        return f"; valid: {shown}{', ...' if len(names) > 12 else ''}"
    return ""


def locate(token: str, files: list[Path], args: list[str]) -> str:
    """' (file:line)' where `token` is first written in the config files, ' (command line)' if there."""
    leaf = token.rsplit(".", 1)[-1]
    if any(leaf in arg for arg in args if not arg.endswith((".yaml", ".yml"))):
        return " (command line)"
    pattern = re.compile(rf"(^|[\s{{,.'\"]){re.escape(leaf)}(\s*:|['\"]|\s*$|[\s,}}])")
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for n, line in enumerate(lines, 1):
            if pattern.search(line.split("#", 1)[0]):
                return f" ({path}:{n})"
    return ""


# ------------------------------------------------------------------------------ the one line
def _cause(message: str):
    """(keys above it, the class it belongs to, the cause line) of the innermost error in `message`."""
    stack: list[tuple[int, str, str]] = []  # (indent, 'key' | 'class', value)
    for raw in message.splitlines():
        line = raw.strip().lstrip("- ").strip()
        if not line:
            continue
        indent = len(raw) - len(raw.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key, cls = _KEY.match(line), _CLASS.match(line)
        if key or cls:
            stack.append((indent, "key" if key else "class", (key or cls).group(1)))
            continue
        if line.startswith(_STRUCTURE) and not _EXPECTED.match(line):
            continue
        if _EXPECTED.match(line):
            continue  # a type mismatch: reported from the key and the given value below
        keys = [v for _, kind, v in stack if kind == "key"]
        classes = [v for _, kind, v in stack if kind == "class"]
        return keys, classes, line
    return None


def _type_error(message: str) -> Optional[str]:
    """'key: value is not ...' for a value of the wrong type."""
    keys = [k for k in _KEY.findall(message)]
    expected = [e for e in _EXPECTED.findall(message) if "NoneType" not in e and "NestedArg" not in e]
    given = [g for g in _GIVEN.findall(message) if not g.startswith(("NestedArg", "{", "["))]
    if not expected or not given:
        return None
    kinds = ", ".join(dict.fromkeys(re.sub(r"<class '(\w+)'>", r"\1", e).replace("typing.", "") for e in expected))
    return f"{'.'.join(keys)}: {given[0]!r} is not a valid value (expected {kinds})"


def explain(message: str, args: list[str]) -> str:
    """One line for a jsonargparse error message: the key, where it was given, the nearest valid names."""
    files = config_files(args)
    found = _cause(message)
    if found is None:
        return _type_error(message) or " ".join(message.split())
    keys, classes, line = found
    where = ".".join(keys)
    cls = _import(classes[-1]) if classes else None
    if m := _NO_ATTRIBUTE.search(line):
        bad = f"{m.group(1)}.{m.group(2)}"
        return (f"{where}: no class '{bad}'{nearest(bad, module_classes(m.group(1)))}"
                f"{locate(m.group(2), files, args)}")
    if m := _NO_MODULE.search(line):
        bad = classes[-1] if classes else m.group(1)
        return f"{where}: cannot import '{bad}' ({line}){locate(bad, files, args)}"
    if m := _UNKNOWN.search(line):
        name = m.group(1)
        names = init_parameters(cls) if cls is not None else []
        return (f"{where}.{name}: {classes[-1] if classes else where} has no setting '{name}'"
                f"{nearest(name, names, where + '.')}{locate(name, files, args)}")
    group = name = None
    if m := _GROUP.search(line):
        group, name = m.groups()
    elif m := _UNRECOGNIZED.search(line):
        group, _, name = m.group(1).partition(".")
    if group and name:
        names = group_fields(cls, group) if cls is not None else []
        return (f"{where}.{group}.{name}: '{group}' has no setting '{name}'"
                f"{nearest(name, names, f'{where}.{group}.')}{locate(name, files, args)}")
    if group:  # an unknown option with no group
        names = init_parameters(cls) if cls is not None else []
        return f"{where}.{group}: no such setting{nearest(group, names, where + '.')}{locate(group, files, args)}"
    typed = _type_error(message)
    if typed:
        return typed
    return f"{where}: {line}" if where else line


# ------------------------------------------------------------------------------ group help
def settings_help(cls, group: str, prefix: str = "model") -> Optional[str]:
    """The `--help` text of one settings group of `cls` (e.g. EditModule.sampling), or None if it has none."""
    from jsonargparse import ArgumentParser

    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        hint = typing.get_type_hints(init).get(group)
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate):
                parser = ArgumentParser(prog=f"--{prefix}.{group}", add_help=False)
                parser.add_class_arguments(candidate, f"{prefix}.{group}")
                return parser.format_help()
        if hint is not None:
            return None
    return None


# ------------------------------------------------------------------------------ compact help
HELP_WIDTH = 150
"""Longest line of the compact `--help`: each option is one line, a longer text is clipped to fit."""
_ABBREVIATIONS = ("Eq", "Eqs", "Fig", "al", "e.g", "i.e", "etc", "cf", "vs", "approx")


def first_sentence(text: Optional[str]) -> str:
    """A help text's first sentence on one line (reST markup dropped; 'Eq. 7', 'e.g.' do not end it)."""
    text = " ".join((text or "").replace("``", "`").split())
    for match in re.finditer(r"\.(\s|$)", text):
        word = re.search(r"([\w.]*)$", text[:match.start()]).group(1)
        if word and word not in _ABBREVIATIONS and not word.endswith(_ABBREVIATIONS):
            return text[:match.start() + 1]
    return text


def _default_text(value) -> str:
    if isinstance(value, str) and value == "==SUPPRESS==":
        return ""
    class_path = getattr(value, "class_path", None)
    if class_path is not None:
        return class_path.rsplit(".", 1)[-1]
    if isinstance(value, (list, tuple)):
        return "[...]" if value else "[]"
    if dataclasses.is_dataclass(value) or isinstance(value, dict):
        return ""
    if value == "":
        return "''"
    return "null" if value is None else str(value)


def _shown(action) -> bool:
    """Options the compact help lists: not -h, not the `.help` actions, not the config-file loaders of groups."""
    if not action.option_strings or action.option_strings[0] in ("-h", "--help"):
        return False
    return not action.option_strings[0].endswith(".help") and type(action).__name__ != "_ActionConfigLoad"


def option_lines(actions: list, prefix: str = "", width: int = HELP_WIDTH) -> list[str]:
    """One line per option: `  NAME  DEFAULT  meaning`, NAME without `prefix`, the meaning clipped to `width`."""
    rows = [(a.option_strings[0][len(prefix):], _default_text(a.default), first_sentence(a.help)) for a in actions]
    if not rows:
        return []
    names = max(len(name) for name, _, _ in rows)
    defaults = min(max(len(default) for _, default, _ in rows), 14)
    lines = []
    for name, default, text in rows:
        head = f"  {name.ljust(names)}  {default.ljust(defaults)}  "
        room = width - len(head)
        if len(text) > room:
            text = text[:max(room - 3, 0)].rstrip() + "..."
        lines.append((head + text).rstrip())
    return lines


def compact_help(parser, models, data, command: str) -> str:
    """The subcommand's `--help`, one line per option (name, default, meaning): its own options, the Trainer's, the
    model's settings (`models`: a parser of the default model's arguments) and the data module's (`data`)."""
    lines = [f"usage: python -m framework {command} [-c CONFIG.yaml] [--print_config] [--KEY VALUE ...]", "",
             f"{first_sentence(parser.description)} Each option: name, default, meaning. The full reference: a group's",
             "--model.sampling.help (also mask, ito, guidance, auto_lam), a plugin's --model.conditioners.help CLASS, the",
             "model's --model.help EditModule; what the defaults rest on (measurements): docs/settings.md.", ""]
    own, trainer = [], []
    for action in parser._actions:
        if _shown(action) and not action.option_strings[0].startswith(("--model", "--data")):
            (trainer if action.option_strings[0].startswith("--trainer.") else own).append(action)
    lines += ["options:", *option_lines(own), "",
              "trainer: --trainer.NAME VALUE, Lightning's Trainer(NAME=VALUE); the project's defaults shown:",
              *option_lines(trainer, "--trainer.", width=120)]
    for key, cls, sub in (("model", "framework.EditModule", models), ("data", "framework.EditDataModule", data)):
        lines += ["", f"{key}: --{key}.NAME VALUE, the settings of {cls} (another class: --{key} CLASS, its "
                      f"settings: --{key}.help CLASS):"]
        for group in sub._action_groups:
            shown = [a for a in group._group_actions if _shown(a)]
            if not shown:
                continue
            group_key = shown[0].option_strings[0][len(f"--{key}."):].rpartition(".")[0]
            if group_key:  # a settings group (--model.mask.NAME): its title, then its fields
                lines.append(f" {group_key}: {first_sentence(group.title).rstrip(':')}")
            lines += option_lines(shown, f"--{key}.")
    return "\n".join(lines) + "\n"
