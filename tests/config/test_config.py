"""The typed configuration: presets, overrides, and errors that name the field."""

import pytest

from segpipe.config import PRESETS, ConfigError, PipelineConfig, build_config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_valid(preset):
    cfg = build_config(preset)
    assert cfg.preset == preset
    assert isinstance(cfg, PipelineConfig)


def test_keras_example_preset_is_the_examples_recipe():
    cfg = build_config("keras-example")
    assert (cfg.model.name, cfg.train.img_size, cfg.train.batch_size) == ("xception_unet", 160, 32)
    assert (cfg.train.optimizer, cfg.train.learning_rate) == ("adam", 1e-4)


def test_overrides_dotted_and_nested():
    cfg = build_config("cpu-quick", {"train.epochs": 3, "data": {"seed": 7}, "model.name": "xception_unet"})
    assert cfg.train.epochs == 3 and cfg.data.seed == 7 and cfg.model.name == "xception_unet"
    assert cfg.train.img_size == PRESETS["cpu-quick"]["train"]["img_size"]


def test_none_overrides_are_ignored():
    cfg = build_config("tiny", {"train.epochs": None})
    assert cfg.train.epochs is None and cfg.train.budget_images == PRESETS["tiny"]["train"]["budget_images"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"train.epochs": -1}, "train.epochs"),
        ({"model.name": "segformer"}, "model.name"),
        ({"train.img_size": 100}, "train.img_size"),
        ({"data.seed": 2**32}, "data.seed"),
        ({"data.val_fraction": 1.5}, "data.val_fraction"),
        ({"data.split": "weird"}, "data.split"),
        ({"data.source": "  "}, "data.source"),
        ({"train.nonsense": 1}, "train.nonsense"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        build_config(None, overrides)
    assert field in str(err.value)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="preset: unknown preset 'nope'.*cpu-quick"):
        build_config("nope")


def test_img_size_rule_follows_the_model():
    build_config(None, {"model.name": "unet", "model.depth": 2, "train.img_size": 36})
    with pytest.raises(ConfigError, match="multiples of 16"):
        build_config(None, {"model.name": "xception_unet", "train.img_size": 40})


@pytest.mark.parametrize("rates", [(), (0,), (-2, 4), (3, 3), ("six",)])
def test_bad_aspp_rates_fail_naming_the_field_before_any_work(rates):
    with pytest.raises(ConfigError, match=r"model\.aspp_rates"):
        build_config("cpu-quick", {"model.aspp_rates": rates})


def test_aspp_rates_from_the_command_line():
    from segpipe_app.cli.options import parse_value

    assert build_config("cpu-quick", {"model.aspp_rates": parse_value("[3,5,8]")}).model.aspp_rates == (3, 5, 8)


def test_a_model_knob_the_model_does_not_take_fails_before_any_work():
    with pytest.raises(ConfigError, match=r"model\.aspp_rates: model 'segnet' does not take aspp_rates; it takes "
                                          r"base_filters, depth"):
        build_config(None, {"model.name": "segnet", "model.aspp_rates": (1, 2)})
    with pytest.raises(ConfigError, match=r"model\.depth: model 'deeplabv3plus' does not take depth"):
        build_config(None, {"model.name": "deeplabv3plus", "model.depth": 3})
    # a preset's knobs for another model are dropped with the switch, as its encoder settings are
    assert build_config("tiny", {"model.name": "deeplabv3plus", "train.img_size": 32}).model.base_filters == 16
    assert set(build_config("cpu-quick", {"model.name": "xception_unet"}).model.params()) == {"bn_momentum"}


@pytest.mark.parametrize("encoder", ["none", "null"])
def test_no_encoder_drops_the_presets_encoder_settings_but_not_the_users(encoder):
    """`--model unet --encoder none` on cpu-quick is the classic U-Net with cpu-quick's recipe: the preset's
    weights and encoder training settings go with its encoder; the same settings given by the user still fail."""
    cfg = build_config("cpu-quick", {"model.name": "unet", "model.encoder": encoder})
    assert cfg.model.encoder is None and cfg.model.encoder_weights is None
    assert (cfg.train.freeze_encoder_images, cfg.train.freeze_encoder_stride, cfg.train.freeze_encoder_bn,
            cfg.train.fold_frozen_bn, cfg.train.encoder_lr_multiplier) == (0, 0, False, False, 1.0)
    assert cfg.train.img_size == 224 and cfg.train.budget_images == 4800  # the rest of the recipe stays
    with pytest.raises(ConfigError, match=r"train\.freeze_encoder_stride: model 'unet' has no pretrained encoder"):
        build_config("cpu-quick", {"model.name": "unet", "model.encoder": encoder, "train.freeze_encoder_stride": 4})


def test_one_definition_of_the_augmentation_knobs_and_the_collapse_threshold():
    from segpipe.config.augment import DEFAULTS, KNOBS
    from segpipe.config import COLLAPSE_THRESHOLD

    train = build_config(None, {}).train
    assert train.augment_options() == DEFAULTS
    assert [k.field for k in KNOBS] == [f for f in type(train).model_fields if f.startswith("aug_")]
    assert build_config(None, {}).eval.collapse_threshold == COLLAPSE_THRESHOLD
    from segpipe.config.augment import check_options

    with pytest.raises(ValueError, match=r"0 <= contrast < 1 \(got 1\.0\)"):
        check_options({"contrast": 1.0, "hue": 10.0})
    with pytest.raises(ValueError, match="unknown augment option.*rotation; expected some of max_scale"):
        check_options({"rotation": 3.0})


def test_content_params_exclude_location_and_speed():
    a = build_config(None, {"data.source": "/a", "data.workers": 1}).data.content_params()
    b = build_config(None, {"data.source": "http://b/", "data.workers": 4}).data.content_params()
    assert a == b and "source" not in a
    assert build_config(None, {"data.seed": 1}).data.content_params() != a


def test_augmentation_strength_is_configurable_and_checked() -> None:
    cfg = build_config("cpu-quick", {"train.aug_max_scale": 1.5, "train.aug_max_rotation": 20})
    assert cfg.train.augment_options() == {"max_scale": 1.5, "max_rotation_degrees": 20.0,
                                           "brightness": cfg.train.aug_brightness, "contrast": cfg.train.aug_contrast,
                                           "hue": cfg.train.aug_hue, "saturation": cfg.train.aug_saturation}
    assert build_config(None, {}).train.aug_hue == 0.0 == build_config(None, {}).train.aug_saturation  # off
    with pytest.raises(ConfigError, match="train.aug_hue"):
        build_config("cpu-quick", {"train.aug_hue": 200})
    with pytest.raises(ConfigError, match="train.aug_saturation"):
        build_config("cpu-quick", {"train.aug_saturation": 1.5})
    with pytest.raises(ConfigError, match="train.aug_max_scale"):
        build_config("cpu-quick", {"train.aug_max_scale": 0.9})
    with pytest.raises(ConfigError, match="train.aug_contrast"):
        build_config("cpu-quick", {"train.aug_contrast": 1.0})


@pytest.mark.parametrize("sizes, words", [
    ([224, 224], "repeats a size"),
    ([16], "from 32 to 1024"),
    ([160], "is train.img_size"),
    ([200], "multiples of 16"),
    ([192, 224, 256, 288, 320], "at most 4"),
    ("224", "valid tuple"),
])
def test_tta_sizes_are_checked_against_the_model_before_any_work(sizes, words):
    with pytest.raises(ConfigError, match="eval.tta_sizes") as err:
        build_config("cpu-quick", {"train.img_size": 160, "eval.tta_sizes": sizes})
    assert words in str(err.value)


def test_tta_sizes_take_the_models_own_rule():
    assert build_config("cpu-quick", {"eval.tta_sizes": [288, 128]}).eval.tta_sizes == (288, 128)
    build_config(None, {"model.name": "unet", "model.depth": 2, "train.img_size": 36, "eval.tta_sizes": [44]})
    with pytest.raises(ConfigError, match="eval.tta_sizes.*multiples of 4"):
        build_config(None, {"model.name": "unet", "model.depth": 2, "train.img_size": 36, "eval.tta_sizes": [42]})
