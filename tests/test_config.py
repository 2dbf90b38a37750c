import pytest

from nanogpt_edu.config import ConfigError, SampleConfig, apply_overrides, read_config_file, resolve_start


def overrides(*argv):
    lines = []
    return apply_overrides(SampleConfig(), list(argv), log=lines.append), lines


def test_defaults_are_nanogpts_except_model_and_device():
    c = SampleConfig()
    assert (c.init_from, c.out_dir, c.start, c.num_samples, c.max_new_tokens) == ("pocket", "out", "\n", 10, 500)
    assert (c.temperature, c.top_k, c.seed, c.device, c.compile) == (0.8, 200, 1337, "auto", False)
    assert c.dtype in ("bfloat16", "float16")


def test_overrides_are_applied_and_logged_as_nanogpt_does():
    config, lines = overrides("--init_from=gpt2-xl", "--start=Hello, my name is", "--num_samples=3",
                              "--max_new_tokens=200")
    assert lines[0] == "Overriding: init_from = gpt2-xl"
    assert (config.init_from, config.start, config.num_samples, config.max_new_tokens) == \
        ("gpt2-xl", "Hello, my name is", 3, 200)
    assert SampleConfig().init_from == "pocket"  # the defaults are not touched


def test_value_may_contain_equals_sign():
    config, _ = overrides("--start=a=b")
    assert config.start == "a=b"


def test_none_int_for_float_and_booleans():
    config, _ = overrides("--top_k=None", "--temperature=1", "--compile=True", "--top_p=0.9")
    assert config.top_k is None
    assert config.temperature == 1.0 and isinstance(config.temperature, float)
    assert config.compile is True and config.top_p == 0.9


def test_text_settings_keep_the_raw_text():
    config, _ = overrides("--start=42", "--init_from=gpt2")
    assert config.start == "42"
    config, _ = overrides("--start='quoted'")
    assert config.start == "quoted"


def test_config_file_is_read_not_run(tmp_path):
    path = tmp_path / "xl.py"
    path.write_text('"""Sample from the big one."""\n# a comment\ninit_from = "gpt2-xl"\ntemperature = 0.9\n')
    config, lines = overrides(str(path), "--temperature=0.5")
    assert config.init_from == "gpt2-xl"
    assert config.temperature == 0.5  # later arguments win, as in nanoGPT
    assert lines == ["Overriding: init_from = gpt2-xl", "Overriding: temperature = 0.9",
                     "Overriding: temperature = 0.5"]


def test_config_file_with_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.py"
    path.write_text(f"temperature = 0.9\nimport os\nos.system('touch {marker}')\n")
    with pytest.raises(ConfigError, match=r"evil\.py, line 2: only 'name = value' settings are allowed, found import"):
        overrides(str(path))
    assert not marker.exists()
    path.write_text(f"top_k = __import__('os').system('touch {marker}')\n")
    with pytest.raises(ConfigError, match="line 1: the value of top_k must be a literal"):
        overrides(str(path))
    assert not marker.exists()


def test_prompt_from_file(tmp_path):
    (tmp_path / "prompt.txt").write_text("ROMEO:\nBut soft", encoding="utf-8")
    assert resolve_start(f"FILE:{tmp_path / 'prompt.txt'}") == "ROMEO:\nBut soft"
    assert resolve_start("plain text") == "plain text"


def test_read_config_file_gives_lines(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("\n\nseed = 7\n")
    assert read_config_file(path) == [("seed", 7, 3)]


def test_files_are_read_only_up_to_their_limit_and_only_if_regular(tmp_path):
    from nanogpt_edu.limits import MAX_CONFIG_BYTES, MAX_PROMPT_BYTES

    (tmp_path / "big.py").write_text("seed = 1\n" + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match=r"big\.py has 65,545 bytes, more than the limit of 65,536"):
        read_config_file(tmp_path / "big.py")
    (tmp_path / "prompt.txt").write_text("a" * MAX_PROMPT_BYTES)
    assert len(resolve_start(f"FILE:{tmp_path / 'prompt.txt'}")) == MAX_PROMPT_BYTES  # the limit itself is fine
    with pytest.raises(ConfigError, match="prompt file /dev/zero is not a regular file"):
        resolve_start("FILE:/dev/zero")


def test_bytes_that_are_not_utf8_on_the_command_line_are_refused():
    # Python keeps such bytes as lone surrogates; as a prompt they would reach the tokenizer and the terminal
    with pytest.raises(ConfigError, match=r"argument '--start=\\udcff': start is not valid text"):
        overrides("--start=\udcff")


def test_counts_and_seed_have_upper_limits():
    with pytest.raises(ConfigError, match="max_new_tokens must be at most 1,000,000"):
        overrides("--max_new_tokens=1000001")
    with pytest.raises(ConfigError, match=r"seed must be a whole number from -2\*\*63 to 2\*\*64-1"):
        overrides(f"--seed={2**64}")
    config, _ = overrides(f"--seed={2**64 - 1}", "--max_new_tokens=1000000")
    assert config.seed == 2**64 - 1
