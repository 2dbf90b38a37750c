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


def test_devices_are_read_as_torch_reads_them():
    import pytest

    from nanogpt_edu.devices import DeviceError, check_seed

    assert pick_device("cpu:0") == ("cpu:0", "as asked")
    for bad in ("cpu:abc", " cpu", "meta", "", "tpu"):
        with pytest.raises(DeviceError, match="unknown device"):
            pick_device(bad)
    check_seed(-(2**63))
    check_seed(2**64 - 1)
    for bad in (2**64, -(2**63) - 1, 1.0, True, "1"):
        with pytest.raises(DeviceError, match="seed must be a whole number"):
            check_seed(bad)
