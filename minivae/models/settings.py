"""The model-specific settings of each model: the keys of ``minivae train --set KEY=VALUE``.

They are read from the model's constructor, so they cannot drift from it: every keyword
parameter is a setting, typed by its annotation when it has one (the first type of a union
other than None) and otherwise by its default (``flows=8`` is an int, ``hidden2=(100, 100)`` a
tuple of ints); a parameter the model lists in ``run_options`` is given as a run folder (a str)
whose model ``minivae.runs`` loads. Two kinds of parameters are not settings:

* ``COMMON``: the ones every model receives from the trainer's own options (``--z-dim``,
  ``--hidden``, ...). ``--set z_dim=5`` is refused, so that a run has one value for each and
  ``config.json`` records it;
* ``INTERNAL``: the image size, fixed by the data, and the initialization generator.

``parse_setting`` turns the text of a ``--set`` value into that type, strictly: ``flows=2.5``
or ``flows=abc`` is an error, not 2 or a string; and refuses a number below the setting's
minimum (``MINIMUMS``: a size of 0, a negative weight or temperature), which the models would
otherwise meet with a division by zero deep inside, or accept silently.
"""
import dataclasses
import inspect
import math
import types
import typing

from . import MODELS

#: The constructor parameters set by the trainer's options, and the option that sets each.
COMMON = {"z_dim": "--z-dim", "hidden": "--hidden", "activation": "--activation", "beta": "--beta",
          "mc_samples": "--mc-samples", "iw_k": "--iw-k"}
#: Constructor parameters that are not settings: the image size (from the data) and the generator.
INTERNAL = ("x_dim", "rng")
#: The smallest valid value of each numeric setting (of each item of a list), by name: a name
#: means the same in every model that has it. (value, True) admits the value itself, (value,
#: False) only numbers above it (a temperature of 0 would divide by 0). The minimum of a real
#: setting is where the models' own check (``base.SETTING_RANGES``) draws the line.
MINIMUMS = {
    # sizes and counts
    "layers": (1, True), "k": (1, True), "z1_dim": (1, True), "hidden2": (1, True), "z_dims": (1, True),
    "mlp_layers": (1, True), "classifier_hidden": (1, True), "a_dim": (1, True), "n_vars": (1, True),
    "n_classes": (2, True), "num_classes": (2, True), "steps_per_epoch": (1, True),
    "flows": (0, True),  # no flows: the plain VAE
    # weights, rates and temperatures
    "alpha": (0, True), "alpha_scale": (0, True), "anneal_rate": (0, True),
    "tau0": (0, False), "tau_min": (0, False),
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One ``--set`` key of a model: its name, its type (``item`` for a tuple's elements) and default."""
    name: str
    type: type
    default: object
    item: type = None
    optional: bool = False
    minimum: tuple = None  # (value, inclusive) from MINIMUMS; None for a setting that is no number
    run_folder: bool = False  # names the folder of another run (the model's run_options)

    def type_name(self):
        """The type as help text shows it, with the valid range: ``int >= 1``, ``float > 0``,
        ``list of int >= 1``, ``str or none``."""
        name = f"list of {self.item.__name__}" if self.type is tuple else self.type.__name__
        if self.minimum is not None:
            low, inclusive = self.minimum
            name += f" {'>=' if inclusive else '>'} {low}"
        return f"{name} or none" if self.optional else name

    def check_range(self, value):
        """Raise ValueError (the reason, for ``parse_setting``'s message) when the number
        ``value`` is below the minimum."""
        if self.minimum is None:
            return
        low, inclusive = self.minimum
        if value < low or (value == low and not inclusive):
            raise ValueError("is out of range")

    def describe(self):
        """``name (type, default value)``, one entry of a help listing; ``name (run folder,
        required)`` for a run folder the model cannot do without (M1+M2's ``m1``)."""
        if self.run_folder and self.default is None:
            return f"{self.name} (run folder, required)"
        default = "none" if self.default is None else _format(self.default)
        return f"{self.name} ({self.type_name()}, default {default})"


def _format(value):
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def _annotated_type(annotation):
    """(type, item type, optional) of an annotation such as ``int | None`` or ``tuple[int, ...]``."""
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = typing.get_args(annotation)
        optional = type(None) in args
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return tuple, typing.get_args(annotation)[0], optional
    return annotation, None, optional


def _setting(param, run_options):
    if param.name in run_options:
        return Setting(param.name, str, param.default, optional=param.default is None, run_folder=True)
    minimum = MINIMUMS.get(param.name)
    if param.annotation is not inspect.Parameter.empty:
        kind, item, optional = _annotated_type(param.annotation)
        return Setting(param.name, kind, param.default, item, optional or param.default is None, minimum)
    default = param.default
    if isinstance(default, tuple):
        return Setting(param.name, tuple, default, type(default[0]) if default else int, minimum=minimum)
    return Setting(param.name, type(default), default, minimum=minimum)


def model_settings(model):
    """The ``--set`` keys of the model registered as ``model``: a dict name -> ``Setting``, in
    the constructor's order. Raises ValueError naming the models for an unknown name."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    params = inspect.signature(MODELS[model]).parameters.values()
    run_options = getattr(MODELS[model], "run_options", ())
    return {p.name: _setting(p, run_options) for p in params
            if p.name not in COMMON and p.name not in INTERNAL and p.kind is p.POSITIONAL_OR_KEYWORD}


def _parse_scalar(kind, text):
    if kind is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError("is not true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("is not an integer") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("is not a number") from None
        if not math.isfinite(value):
            raise ValueError("is not a finite number")
        return value
    if kind is str:
        return text
    raise ValueError(f"cannot be given on the command line (a {kind.__name__})")


def parse_setting(model, key, text):
    """The value of ``--set key=text`` for ``model``, converted to the setting's type.

    A list is written ``100,100`` or ``[100, 100]`` and returned as a list (its JSON form, as
    ``config.json`` stores it); ``none`` is accepted where the default is None. Spaces around
    the value are no part of it, whatever its type (``"batch_norm= true"`` as ``"flows= 8"``).
    Raises ValueError with a one-line message naming the key, the value and what would be valid.
    """
    if key in COMMON:
        raise ValueError(f"--set {key}={text}: {key} has its own option; use {COMMON[key]} instead")
    settings = model_settings(model)
    if key not in settings:
        valid = "; ".join(s.describe() for s in settings.values())
        raise ValueError(f"--set {key}={text}: model {model!r} has no setting {key!r}; "
                         + (f"its settings: {valid}" if valid else "it has no --set settings"))
    setting = settings[key]
    # int() and float() take surrounding spaces; so must a bool, a none, a name and a folder.
    given = text.strip()
    if setting.optional and given.lower() in ("none", "null"):
        return None
    try:
        if setting.run_folder and not given:  # Path("") is the current folder, not a run
            raise ValueError("is an empty path; give the folder of a `minivae train` run")
        if setting.type is tuple:
            items = [t for t in given.strip("[]()").replace(",", " ").split()]
            if not items:
                raise ValueError("is an empty list")
            values = [_parse_scalar(setting.item, t) for t in items]
        else:
            values = [_parse_scalar(setting.type, given)]
        for value in values:
            setting.check_range(value)
        return values if setting.type is tuple else values[0]
    except ValueError as exc:
        raise ValueError(f"--set {key}={text}: {text!r} {exc} (expected {setting.describe()})") from None
