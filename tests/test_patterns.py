import pytest
import torch
from safetensors.torch import load_file

from ssmttm.patterns import make_pattern

S = 1024


def test_delay_matches_the_worked_example_byte_for_byte():
    codes = torch.arange(1, 25).view(1, 4, 6)
    expected = torch.tensor([[S, 1, 2, 3, 4, 5], [S, S, 7, 8, 9, 10], [S, S, S, 13, 14, 15], [S, S, S, S, 19, 20]])
    assert torch.equal(make_pattern("delay", 4, S).build(codes, length=6)[0], expected)


def test_delay_matches_the_release_to_delay_of_the_golden_file(golden_dir):
    golden = load_file(golden_dir / "release_simba_k4_golden.safetensors")
    frames = golden["frames"]
    assert torch.equal(make_pattern("delay", 4, S).build(frames, length=frames.shape[-1]), golden["codes"])


def test_single_codebook_gets_one_start_column():
    seq = make_pattern("delay", 1, S).build(torch.tensor([[[5, 6, 7]]]))
    assert seq.tolist() == [[[S, 5, 6, 7]]]


@pytest.mark.parametrize("name", ["delay", "parallel"])
@pytest.mark.parametrize("k", range(1, 10))
def test_pattern_then_inverse_is_identity(name, k):
    pattern = make_pattern(name, k, S)
    codes = torch.randint(0, S, (2, k, 17))
    seq = pattern.build(codes)
    assert seq.shape[-1] == pattern.sequence_length(17)
    assert torch.equal(pattern.revert(seq), codes)


@pytest.mark.parametrize("name", ["delay", "parallel"])
def test_valid_mask_marks_exactly_the_real_tokens(name):
    pattern = make_pattern(name, 4, S)
    codes = torch.randint(0, S, (3, 4, 9))
    seq = pattern.build(codes)
    valid = pattern.valid_mask(9)
    assert torch.equal(seq != S, valid.expand_as(seq))


def test_parallel_pattern_does_not_shift():
    codes = torch.randint(0, S, (1, 3, 5))
    assert torch.equal(make_pattern("parallel", 3, S).build(codes), codes)


def test_revert_of_a_truncated_array_fills_lost_frames_with_special():
    pattern = make_pattern("delay", 2, S)
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])
    truncated = pattern.build(codes, length=3)
    assert pattern.revert(truncated, num_frames=3).tolist() == [[[1, 2, S], [4, S, S]]]


def test_wrong_codebook_count_is_a_clear_error():
    with pytest.raises(ValueError, match="pattern is for 4 codebooks, got 2"):
        make_pattern("delay", 4, S).build(torch.zeros(1, 2, 3, dtype=torch.long))


@pytest.mark.parametrize("name", ["delay", "parallel"])
def test_streaming_revert_gives_each_frame_once_its_last_codebook_arrives(name):
    from ssmttm.patterns import StreamingRevert

    pattern = make_pattern(name, 4, 99)
    codes = torch.randint(0, 50, (2, 4, 13))
    seq = pattern.build(codes)
    revert = StreamingRevert(pattern)
    pieces = [revert.push(seq[..., s]) for s in range(seq.shape[-1])]
    assert [p.shape[-1] for p in pieces] == [0] * pattern.max_shift + [1] * 13
    assert torch.equal(torch.cat(pieces, dim=-1), codes)
    assert len(revert._columns) == pattern.max_shift + 1  # bounded, whatever the length
