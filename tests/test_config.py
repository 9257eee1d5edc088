"""Config files and overrides: typed, validated, unknown keys refused; shipped configs parse."""

from pathlib import Path

import pytest

from dept_vl.config import ConfigError, load_config, parse_overrides
from dept_vl.train import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_cli_overrides_beat_the_file_and_are_typed(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("method: pt\nmax_steps: 10\nlr_lowrank: 1e-4\n")
    cfg = load_config(file, parse_overrides(["--max_steps", "20", "--lr_prompt=0.4",
                                             "--question_types", "[color, count]", "--dry_run"]))
    assert (cfg.method, cfg.max_steps, cfg.lr_prompt, cfg.lr_lowrank) == ("pt", 20, 0.4, 1e-4)
    assert cfg.question_types == ["color", "count"] and cfg.dry_run is True


def test_unknown_and_mistyped_keys_are_errors_that_name_them(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("max_step: 10\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown keys \['max_step'\]"):
        load_config(file)
    with pytest.raises(ConfigError, match="command line: batch_size: expected"):
        load_config(None, parse_overrides(["--batch_size", "many"]))
    with pytest.raises(ConfigError, match="method: must be one of"):
        load_config(None, {"method": "prefix"})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["max_steps", "3"])


def test_quickstart_has_a_vqa_and_a_caption_job_and_overrides_reach_both():
    cfg = load_config(CONFIGS / "quickstart.yaml", {"method": "pt", "output_dir": "runs/x"})
    assert set(cfg.jobs) == {"vqa", "caption"}
    vqa, caption = cfg.for_job("vqa"), cfg.for_job("caption")
    assert (vqa.task, caption.task) == ("vqa", "caption")
    assert vqa.method == caption.method == "pt"
    assert vqa.output_dir == str(Path("runs/x/vqa"))
    assert load_config(CONFIGS / "backbone_shapes.yaml").question_types == [
        "color", "shape", "exists"]


def test_gpu_config_builds_with_dry_run_from_local_checkpoints(tmp_path):
    """configs/vqav2_t5base_vit.yaml names hub checkpoints; here the same config is built with
    local stand-ins for them (the only change), as a user without hub access would check it."""
    from conftest import tiny_model
    donor = tiny_model("test_vit")
    donor.t5.save_pretrained(tmp_path / "t5")
    donor.tokenizer.save_pretrained(tmp_path / "t5")
    cfg = load_config(CONFIGS / "vqav2_t5base_vit.yaml")
    assert cfg.method == "dept" and cfg.mixed_precision == "bf16"
    model = dict(cfg.model, t5=str(tmp_path / "t5"),
                 vision=dict(cfg.model["vision"], model_name="test_vit", pretrained=False))
    results = main(["--config", str(CONFIGS / "vqav2_t5base_vit.yaml"), "--dry_run",
                    "--mixed_precision", "no", "--model", repr(model).replace("'", '"'),
                    "--max_length", "24", "--prompt_length", "6", "--rank", "3"])
    # DePT(6, 3) at s=24, d=32 + projection (Linear 64→32 + LayerNorm 32)
    assert results[""]["trainable_parameters"] == 6 * 32 + 3 * (24 + 32) + 64 * 32 + 32 + 64


def test_init_from_takes_a_path_or_a_list_from_the_command_line():
    assert load_config(None, parse_overrides(["--init_from", "runs/a"])).init_from == "runs/a"
    assert load_config(None, parse_overrides(["--init_from", "[runs/a, runs/b]"])).init_from == [
        "runs/a", "runs/b"]
    cfg = load_config(None, parse_overrides(["--init_parts", "[prompt]", "--k_shot", "16"]))
    assert cfg.init_parts == ["prompt"] and cfg.k_shot == 16
