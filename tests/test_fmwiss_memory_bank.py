"""FMWISS's memory bank and copy-paste: labels follow the pasted pixels, only the allowed (old) classes are
pasted, the bank keeps a uniform sample, saves and loads, and refuses a bank of another task or step."""
import pytest
import torch

from fmwiss_d2.data.memory_bank import MemoryBank, MemoryBankMismatchError, paste_instances

ID = {"task": "shapes_6-4", "step": 0, "classes": ["background", "a", "b"]}


def _disk(size=20, radius=8):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= radius ** 2


def _bank(num_classes=4, size=2, crop=16, identity=ID):
    bank = MemoryBank(num_classes, size, crop, identity, min_area=4)
    for c, value in [(1, 100), (2, 200), (3, 50)][: num_classes - 1]:
        image = torch.zeros(3, 20, 20)
        image[:, _disk()] = float(value)
        assert bank.add(c, image, _disk())
    return bank


def test_pasted_labels_cover_exactly_the_pasted_pixels():
    torch.manual_seed(0)
    bank = _bank()
    images = torch.zeros(3, 3, 40, 48)
    out, labels = paste_instances(images, bank, [1, 2], num=2, scale=(0.4, 0.6))
    assert (labels >= 0).any(dim=(1, 2)).all()  # every image got a paste
    changed = (out != 0).any(1)
    assert torch.equal(changed, labels >= 0)  # a pixel changed iff it is labelled as pasted
    for c, value in ((1, 100.0), (2, 200.0)):  # and it shows its class's instance (the crops are flat colours)
        assert torch.allclose(out[:, 0][labels == c], torch.full_like(out[:, 0][labels == c], value), atol=1.0)
    # a paste stays inside each image's own size (padding is never written)
    _, labels = paste_instances(images, bank, [1], num=3, sizes=[(20, 24)] * 3)
    assert (labels[:, 20:] < 0).all() and (labels[:, :, 24:] < 0).all()


def test_pastes_keep_off_the_pixels_to_avoid_when_a_free_place_exists():
    bank = _bank()
    avoid = torch.zeros(4, 40, 40, dtype=torch.bool)
    avoid[:, :, :24] = True  # only the right 16 columns are free; a 12-pixel paste fits there
    hits_free = hits_random = 0
    for trial in range(20):
        torch.manual_seed(trial)
        _, labels = paste_instances(torch.zeros(4, 3, 40, 40), bank, [1], num=1, scale=(0.3, 0.3), avoid=avoid,
                                    tries=64)
        hits_free += int(((labels >= 0) & avoid).any(dim=(1, 2)).sum())
        torch.manual_seed(trial)
        _, labels = paste_instances(torch.zeros(4, 3, 40, 40), bank, [1], num=1, scale=(0.3, 0.3))
        hits_random += int(((labels >= 0) & avoid).any(dim=(1, 2)).sum())
    # 64 tries at a place with 5 free columns of 29: P(all miss) = (24/29)^64 < 1e-5 per image
    assert hits_free == 0
    assert hits_random > 40  # without it most pastes land on the avoided part (sanity of the setting)
    # nowhere free: the paste still happens (the least-covering place), labels still follow it
    full = torch.ones(1, 40, 40, dtype=torch.bool)
    out, labels = paste_instances(torch.zeros(1, 3, 40, 40), bank, [1], num=1, scale=(0.3, 0.3), avoid=full)
    assert (labels == 1).any() and torch.equal((out != 0).any(1), labels >= 0)


def test_only_the_given_old_classes_are_ever_pasted():
    torch.manual_seed(1)
    bank = _bank()  # holds classes 1, 2 (old) and 3 (a class of the current step, added while it trains)
    seen = set()
    for _ in range(30):
        _, labels = paste_instances(torch.zeros(2, 3, 32, 32), bank, [0, 1, 2], num=2)
        seen |= set(labels.unique().tolist())
    assert seen == {-1, 1, 2}  # never 3; never the background (0: nothing stored for it)
    _, labels = paste_instances(torch.zeros(1, 3, 32, 32), bank, [5, 6], num=2)  # classes it does not hold
    assert (labels < 0).all()


def test_reservoir_keeps_every_offered_instance_with_equal_chance():
    counts = torch.zeros(10)
    for trial in range(300):
        torch.manual_seed(trial)
        bank = MemoryBank(2, 3, 8, ID, min_area=1)
        for i in range(10):  # instance i is a flat image of value i
            bank.add(1, torch.full((3, 8, 8), float(i)), torch.ones(8, 8, dtype=torch.bool))
        assert int(bank.count[1]) == 3 and int(bank.seen[1]) == 10
        for v in bank.images[1, :, 0, 0, 0].tolist():
            counts[v] += 1
    # each of the 10 instances is kept with probability 3/10: 90 of 300 trials expected, sd ~ 7.9
    assert ((counts - 90).abs() < 35).all(), counts
    assert not MemoryBank(2, 3, 8, ID, min_area=5).add(1, torch.zeros(3, 8, 8), torch.eye(8, dtype=torch.bool)[:4].T[:4])


def test_save_load_round_trip_and_refusals(tmp_path):
    bank = _bank(num_classes=3, identity=ID)
    path = str(tmp_path / "memory_bank.pth")
    bank.save(path)
    state = MemoryBank.read(path)
    fresh = MemoryBank(5, 2, 16, {"task": "shapes_6-4", "step": 1, "classes": ID["classes"] + ["c", "d"]})
    fresh.adopt(state, expect=ID, where=path)
    for name in ("images", "masks", "count", "seen"):
        assert torch.equal(getattr(fresh, name)[:3], getattr(bank, name)), name
    assert int(fresh.count[3:].sum()) == 0
    # the bank inside a method checkpoint ("method" entry, keys memory_bank.*) reads the same
    torch.save({"method": {f"memory_bank.{k}": v for k, v in bank.state_dict().items()}}, tmp_path / "ckpt.pth")
    assert MemoryBank.read(str(tmp_path / "ckpt.pth"))["identity"] == ID
    with pytest.raises(MemoryBankMismatchError, match="belongs to task 'shapes_6-4' step 0, but task 'shapes_6-2-2'.*delete the stale bank"):
        fresh.adopt(state, expect={**ID, "task": "shapes_6-2-2"}, where=path)
    with pytest.raises(MemoryBankMismatchError, match="step 2 needs the bank of its step 1"):
        fresh.adopt(state, expect={**ID, "step": 1}, where=path)
    with pytest.raises(MemoryBankMismatchError, match="not the first classes"):
        fresh.adopt(state, expect={**ID, "classes": ["background", "b", "a"]}, where=path)
    with pytest.raises(MemoryBankMismatchError, match="BANK_SIZE"):
        MemoryBank(5, 4, 16).adopt(state, expect=ID, where=path)
