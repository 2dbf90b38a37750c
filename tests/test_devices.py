import torch

from nanogpt_edu.devices import pick_device, setup_torch


def test_auto_on_a_cpu_machine_is_cpu_fp32_without_autocast():
    if torch.cuda.is_available():
        return  # this test describes the CPU-only machines CI runs on
    setup = setup_torch(seed=1, device="auto", dtype="bfloat16")
    assert setup.device in ("cpu", "mps")
    assert setup.dtype == "float32"
    assert "float32, no autocast" in setup.explanation and "\n" not in setup.explanation
    with setup.autocast:
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_seed_makes_draws_repeatable():
    setup_torch(seed=1337, device="cpu")
    a = torch.rand(3)
    setup_torch(seed=1337, device="cpu")
    assert torch.equal(a, torch.rand(3))


def test_explicit_cpu_is_respected():
    assert pick_device("cpu") == ("cpu", "as asked")
