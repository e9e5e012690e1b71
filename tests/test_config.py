"""How a run's settings travel: ``--set`` text to typed values, a TrainConfig to config.json (and a
checkpoint's document) and back, and the model rebuilt from it; a resume compares settings as
they mean, not as they happen to be spelled."""
import dataclasses
import json
import re

import pytest

from minivae.models import MODELS
from minivae.models.settings import model_settings, parse_setting
from minivae.runs import ResumeMismatchError, TrainConfig, build_run_model, resumable_options
from test_cli_help import subparsers

#: A value other than the default for every ``--set`` key of every model, as the command line
#: gives it (text), with ``--hidden 8 6``: the round trip below must cover each of them.
NON_DEFAULTS = {
    "vae": {},
    "iwae": {"layers": "2", "k": "3", "z1_dim": "3", "hidden2": "5,4"},
    "ladder": {"z_dims": "3,2", "mlp_layers": "1", "batch_norm": "false", "up_input": "mean",
               "variance": "softplus", "batch_norm_heads": "true"},
    "flow": {"flows": "2", "annealing": "joint"},
    "gumbel": {"n_vars": "3", "n_classes": "4", "tau0": "2", "tau_min": "0.25", "anneal_rate": "0.5",
               "steps_per_epoch": "7"},
    "adgm": {"a_dim": "3"},
    "sdgm": {"a_dim": "3"},
    "m2": {"num_classes": "11", "alpha": "2.5", "alpha_scale": "0.5", "likelihood": "gaussian",
           "labelled_weight": "image"},
    "adgm-ssl": {"a_dim": "3", "num_classes": "11", "alpha": "2.5", "alpha_scale": "0.5",
                 "labelled_weight": "image"},
    "sdgm-ssl": {"a_dim": "3", "num_classes": "11", "alpha": "2.5", "alpha_scale": "0.5",
                 "labelled_weight": "image"},
    "ladder-m2": {"z_dims": "3,2", "mlp_layers": "2", "batch_norm": "false", "num_classes": "11",
                  "classifier_hidden": "6,5", "alpha": "2.5", "alpha_scale": "0.5",
                  "labelled_weight": "image"},
    "m1m2": {"m1": "/runs/m1", "num_classes": "11", "alpha": "2.5", "alpha_scale": "0.5",
             "labelled_weight": "image"},
}
#: M1+M2's M1 as a run records it (``TrainConfig.run_models``), so that no M1 folder is needed.
M1_RECORD = {"m1": {"model": "vae", "kwargs": {"z_dim": 3, "hidden": [7], "activation": "relu", "beta": 1.0,
                                               "mc_samples": 1, "iw_k": 1}}}


def _config(model, options):
    """The config of a run of ``model`` with the model ``options`` (M1+M2 always on its M1)."""
    if model == "m1m2":
        return TrainConfig(model=model, hidden=(8, 6), z_dim=2, model_options=dict({"m1": "/runs/m1"}, **options),
                           run_models=M1_RECORD)
    return TrainConfig(model=model, hidden=(8, 6), z_dim=2, model_options=options)


def _through_json(config):
    """``config`` written as config.json (and a checkpoint's document) writes it, and read back."""
    return TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))


def _settings_of(model):
    """What defines a built model: its parameters' names and shapes, and the plain values (sizes,
    weights, temperatures, names) held by it and by each of its modules."""
    plain = (bool, int, float, str, tuple, dict, type(None))
    values = {(path, name): value for path, module in [("", model), *model.named_modules()]
              for name, value in vars(module).items() if isinstance(value, plain) and not name.startswith("_")}
    return {name: array.shape for name, array in model.state_dict().items()}, values


def test_the_table_names_every_setting_of_every_model():
    assert set(NON_DEFAULTS) == set(MODELS)
    for model in MODELS:
        assert set(NON_DEFAULTS[model]) == set(model_settings(model)), model


@pytest.mark.parametrize("model", list(MODELS))
def test_every_setting_round_trips_through_config_json_to_the_same_model(model):
    """Each setting given by ``--set`` changes the model, and the config read back from JSON
    (lists for tuples) rebuilds that very model and is the same run to resume."""
    options = {key: parse_setting(model, key, text) for key, text in NON_DEFAULTS[model].items()}
    config = _config(model, options)
    read = _through_json(config)
    assert read.model_options == json.loads(json.dumps(options))
    built = _settings_of(build_run_model(config))
    assert _settings_of(build_run_model(read)) == built
    read.check_resumable(config, (0, 1))
    config.check_resumable(read, (0, 1))
    defaults = _settings_of(build_run_model(_config(model, {})))
    # Each one is used: alone, or with the others; a setting used only with another (iwae's
    # hidden2 with layers=2) comes with it, and goes with it. A run folder (M1+M2's m1) is
    # replaced by the model it holds, whose record test_m1m2 checks.
    needs = getattr(MODELS[model], "conditional_settings", {})
    for key in options.keys() - set(getattr(MODELS[model], "run_options", ())):
        given = {key: options[key]}
        if key in needs:
            other, value = needs[key]
            given[other] = value
        alone = _settings_of(build_run_model(_config(model, given)))
        rest = {k: v for k, v in options.items() if k != key and (k not in needs or needs[k][0] != key)}
        others = _settings_of(build_run_model(_config(model, rest)))
        assert alone != defaults or others != built, (model, key)


def test_a_sequence_given_as_a_list_or_a_tuple_is_the_same_setting_to_resume():
    """``--set`` and JSON give lists, TrainConfig and the models' defaults tuples: the default
    given explicitly, or a Python config with tuples resumed from its checkpoint, is no change."""
    saved = _through_json(TrainConfig(model="iwae"))
    TrainConfig(model="iwae", model_options={"hidden2": parse_setting("iwae", "hidden2", "100,100")}
                ).check_resumable(saved, (0, 1))
    TrainConfig(hidden=[512, 256]).check_resumable(_through_json(TrainConfig()), (0, 1))
    tuples = TrainConfig(model="ladder", hidden=(8, 6), model_options={"z_dims": (3, 2)})
    tuples.check_resumable(_through_json(tuples), (0, 1))
    with pytest.raises(ValueError, match=r"--set hidden2: \(100, 100\) -> \(50, 50\)"):
        TrainConfig(model="iwae", model_options={"hidden2": [50, 50]}).check_resumable(saved, (0, 1))


@pytest.mark.parametrize("name, value", [("z_dim", 5), ("hidden", [4]), ("beta", 2.0), ("x_dim", 10), ("rng", 3)])
def test_a_model_option_that_would_override_the_config_is_refused(name, value):
    """``model_options={"z_dim": 5}`` from Python built a model of z_dim 5 while config.json
    recorded the config's own z_dim: the record of the run would describe another model."""
    config = TrainConfig(hidden=(8,), z_dim=2, model_options={name: value})
    with pytest.raises(ValueError, match=f"model_options holds '{name}'"):
        build_run_model(config)


@pytest.mark.parametrize("model, key, text, value", [
    ("ladder", "batch_norm", " true", True), ("ladder", "batch_norm", "false ", False),
    ("flow", "flows", " 8 ", 8), ("gumbel", "tau0", " 2", 2.0), ("m2", "alpha", " none ", None),
    ("m2", "likelihood", " gaussian", "gaussian"), ("ladder", "z_dims", " 4, 2 ", [4, 2]),
])
def test_spaces_around_a_set_value_are_no_part_of_it_whatever_its_type(model, key, text, value):
    """``--set "flows= 8"`` was 8 (int() takes the spaces) while ``--set "batch_norm= true"`` was
    refused as "not true or false", and ``alpha= none`` as "not a number"."""
    assert parse_setting(model, key, text) == value


@pytest.mark.parametrize("model, key, text, value", [
    ("ladder", "z_dims", "4,2", [4, 2]), ("ladder", "z_dims", "[4, 2]", [4, 2]),
    ("ladder", "z_dims", "(4, 2)", [4, 2]), ("m2", "alpha", "None", None), ("m2", "alpha", "null", None),
])
def test_the_written_forms_of_a_list_and_of_none(model, key, text, value):
    assert parse_setting(model, key, text) == value


@pytest.mark.parametrize("model, key, text, reason", [
    ("gumbel", "n_classes", "1", "is out of range"), ("gumbel", "tau0", "0", "is out of range"),
    ("flow", "flows", "-1", "is out of range"), ("m2", "alpha", "inf", "is not a finite number"),
    ("gumbel", "tau_min", "nan", "is not a finite number"),
])
def test_the_parser_refuses_what_the_model_would_naming_the_set(model, key, text, reason):
    """Refused where the --set is read, naming it and the valid range, not by the model's
    constructor in its own words after the run folder was chosen."""
    with pytest.raises(ValueError, match=rf"^--set {key}={text}: '{text}' {reason} \(expected {key} "):
        parse_setting(model, key, text)


def test_a_set_run_folder_of_spaces_alone_is_an_empty_path():
    with pytest.raises(ValueError, match=r"--set m1= : ' ' is an empty path"):
        parse_setting("m1m2", "m1", " ")


# ----- resuming: what may change -------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [("seed", 1), ("batch_size", 50), ("lr", 0.01), ("lr_schedule", "constant"),
                                         ("warmup", 3), ("warmup_start", 0.0), ("warmup_unit", "step"),
                                         ("n_labelled", 600), ("mc_samples", 2),
                                         ("labelled_batch_size", 1), ("optimizer", "rmsprop"),
                                         ("momentum", 0.9), ("bn_statistics", "pass")])
def test_a_setting_that_defines_the_run_cannot_change_on_resume(name, value):
    saved = TrainConfig(epochs=2)
    changed = dataclasses.replace(saved, **{name: value})
    with pytest.raises(ResumeMismatchError, match=re.escape(f"{name}: {getattr(saved, name)!r} -> {value!r}")):
        changed.check_resumable(saved, (1, 0))


def test_the_settings_a_resume_may_change_are_named_as_train_takes_them():
    saved = TrainConfig(epochs=2, keep_best=True)
    dataclasses.replace(saved, epochs=5, out="elsewhere", device="gpu", eval_k=0, trace_every=3,
                        eager=True, patience=4).check_resumable(saved, (1, 0))
    options = resumable_options()
    assert options == ["--epochs", "--device", "--eval-k", "--trace-every", "--eager", "--patience"]
    train = dict(subparsers())["train"]
    assert set(options) <= {option for action in train._actions for option in action.option_strings}


def test_a_run_saved_inside_an_epoch_needs_the_epochs_to_finish_it():
    """Saved after 3 batches of epoch 2, the run has begun 2 epochs: --epochs 1 is refused."""
    saved = TrainConfig(epochs=2)
    with pytest.raises(ResumeMismatchError, match=r"has done 1 epochs and 3 batches of the next; give --epochs 2 or more"):
        dataclasses.replace(saved, epochs=1).check_resumable(saved, (1, 3))
    dataclasses.replace(saved, epochs=2).check_resumable(saved, (1, 3))
    dataclasses.replace(saved, epochs=1).check_resumable(saved, (1, 0))


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", True, "of type int"), ("lr", True, "of type float"), ("eager", 1, "of type bool"),
    ("hidden", [True, 8], "a list of integers"), ("hidden", [8.0], "a list of integers"),
    ("warmup_start", "0.5", "of type float | None"), ("warmup_start", False, "of type float | None"),
    ("labelled_batch_size", 1.0, "of type int | None"), ("labelled_batch_size", True, "of type int | None"),
])
def test_a_config_value_of_another_json_type_is_refused(key, value, expected):
    """JSON true is no epoch count, and 1 no switch (Python's bool is an int)."""
    with pytest.raises(ValueError, match=re.escape(f"{key} is {value!r}, not {expected}")):
        TrainConfig.from_dict({key: value})
    assert TrainConfig.from_dict({"lr": 1}).lr == 1  # a float may be written as an integer


def test_the_warmup_start_is_a_number_or_null_and_none_without_one():
    """null (as config.json records the default) and a config saved before warmup_start existed
    read as None, 1 / warmup; a number is read as it was written."""
    assert TrainConfig.from_dict({"warmup_start": None}).warmup_start is None
    assert TrainConfig.from_dict({}).warmup_start is None and TrainConfig.from_dict({}).warmup_unit == "epoch"
    assert TrainConfig.from_dict({"warmup_start": 0}).warmup_start == 0
    assert TrainConfig.from_dict(TrainConfig(warmup_start=0.01).to_dict()).warmup_start == 0.01


def test_a_config_without_the_labelled_batch_size_reads_as_not_given():
    """Configs saved before the setting existed take the labelled batches they were trained on
    (``train.labelled_batch_size``), and null reads back as it was written."""
    assert TrainConfig.from_dict({}).labelled_batch_size is None
    assert TrainConfig.from_dict(json.loads(json.dumps(TrainConfig().to_dict()))) == TrainConfig()
    assert TrainConfig.from_dict({"labelled_batch_size": 3}).labelled_batch_size == 3
