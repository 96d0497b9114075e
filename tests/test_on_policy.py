"""On-policy sampling (GKD) and sequence-level KD on tiny Llama models built from configs."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from tolerances import divergence_tolerance
from torch import Tensor, nn

from torchkd.lm import IGNORE_INDEX, last_hidden_state, next_token_labels, output_projection
from torchkd.lm.on_policy import OnPolicy, _derived_seed
from torchkd.losses import fused_linear_kd_loss
from torchkd.train.distributed import end_process

transformers = pytest.importorskip("transformers")

VOCAB, EOS, PAD = 64, 2, 0


def tiny_llama(seed: int, hidden_size: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(
        "llama",
        vocab_size=VOCAB,
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


def biased(model: nn.Module, token: int, bias: float) -> nn.Module:
    """``model`` with ``bias`` added to the logit of ``token`` (an output layer with a bias)."""
    head = model.get_output_embeddings()
    new_head = nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        new_head.weight.copy_(head.weight)
        new_head.bias.zero_()
        new_head.bias[token] = bias
    model.set_output_embeddings(new_head)
    return model


@pytest.fixture(scope="module")
def student() -> nn.Module:
    return tiny_llama(0)


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return tiny_llama(1, hidden_size=48).eval()


def text_batch(rows: int = 3, length: int = 10, seed: int = 0) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (rows, length), generator=generator)
    return {
        "inputs": {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)},
        "labels": torch.randint(3, VOCAB, (rows, length), generator=generator),
        "index": torch.arange(rows) + 10 * seed,
    }


def prompt_batch() -> dict[str, Any]:
    """Two prompt/completion samples; the first prompt is left-padded by two positions."""
    batch = text_batch(rows=2, length=8)
    batch["prompt_ids"] = torch.tensor([[PAD, PAD, 11, 12], [21, 22, 23, 24]])
    batch["prompt_mask"] = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    return batch


def generated_tokens(batch: dict[str, Any], prompt_length: int) -> Tensor:
    return batch["inputs"]["input_ids"][:, prompt_length:]


# --------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fraction": 1.5}, ValueError, "fraction must be in"),
        ({"fraction": -0.1}, ValueError, "fraction must be in"),
        ({"fraction": True}, TypeError, "fraction must be a number"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"max_new_tokens": 2.0}, ValueError, "max_new_tokens"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": float("inf")}, ValueError, "temperature"),
        ({"temperature": "hot"}, TypeError, "temperature"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"source": "oracle"}, ValueError, "source must be one of"),
        ({"prompt_length": 0}, ValueError, "prompt_length"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], error: type, match: str) -> None:
    arguments = {"fraction": 0.5, "max_new_tokens": 4, **kwargs}
    with pytest.raises(error, match=match):
        OnPolicy(**arguments)


def test_bad_batches_and_models_are_refused(student: nn.Module) -> None:
    always = OnPolicy(fraction=1.0, max_new_tokens=3, prompt_length=4)
    cached = {**text_batch(), "teacher_topk_ids": torch.zeros(3, 10, 2, dtype=torch.long)}
    for fraction in (0.0, 1.0):  # refused whether or not the step is regenerated
        with pytest.raises(ValueError, match=r"cached teacher .*teacher_topk_ids"):
            OnPolicy(fraction, 3, prompt_length=4)(cached, step=0, student=student, teachers=[])
    with pytest.raises(ValueError, match="has no prompts"):
        OnPolicy(1.0, 3)(text_batch(), step=0, student=student, teachers=[])
    with pytest.raises(ValueError, match=r"prompt_length=40: input_ids \(3, 10\)"):
        OnPolicy(1.0, 3, prompt_length=40)(text_batch(), step=0, student=student, teachers=[])
    right_padded = prompt_batch()
    right_padded["prompt_mask"] = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match=r"left-padded .* rows \[0\] end in padding"):
        always(right_padded, step=0, student=student, teachers=[])
    with pytest.raises(ValueError, match=r"source='teacher'.*no teacher"):
        OnPolicy(1.0, 3, source="teacher", prompt_length=4)(
            text_batch(), step=0, student=student, teachers=[]
        )
    with pytest.raises(TypeError, match=r"the student \(Linear\) has no generate"):
        always(text_batch(), step=0, student=nn.Linear(2, 2), teachers=[])


# --------------------------------------------------------------------------- decisions
def test_fraction_zero_keeps_every_batch_and_one_regenerates_every_batch(
    student: nn.Module,
) -> None:
    never = OnPolicy(fraction=0.0, max_new_tokens=3, prompt_length=4)
    always = OnPolicy(fraction=1.0, max_new_tokens=3, prompt_length=4)
    batch = text_batch()
    for step in range(20):
        assert never(batch, step=step, student=student, teachers=[]) is batch
        assert always.regenerates(step)
    regenerated = always(batch, step=0, student=student, teachers=[])
    assert regenerated is not batch
    assert regenerated["inputs"]["input_ids"].shape == (3, 4 + 3)


def test_the_share_of_regenerated_steps_is_lambda() -> None:
    on_policy = OnPolicy(fraction=0.3, max_new_tokens=3, prompt_length=4, seed=5)
    share = sum(on_policy.regenerates(step) for step in range(4000)) / 4000
    assert abs(share - 0.3) < 0.03  # binomial standard deviation 0.007
    other_seed = OnPolicy(fraction=0.3, max_new_tokens=3, prompt_length=4, seed=6)
    decisions = [on_policy.regenerates(step) for step in range(200)]
    assert decisions != [other_seed.regenerates(step) for step in range(200)]


def test_samples_are_a_function_of_seed_step_and_sample_indices(student: nn.Module) -> None:
    on_policy = OnPolicy(fraction=1.0, max_new_tokens=6, prompt_length=4)
    batch = text_batch()

    def tokens(step: int, batch: dict[str, Any] = batch, seed: int = 0) -> Tensor:
        sampler = OnPolicy(fraction=1.0, max_new_tokens=6, prompt_length=4, seed=seed)
        return generated_tokens(sampler(batch, step=step, student=student, teachers=[]), 4)

    assert torch.equal(tokens(7), tokens(7))
    assert not torch.equal(tokens(7), tokens(8))
    assert not torch.equal(tokens(7), tokens(7, seed=1))
    other_indices = {**batch, "index": batch["index"] + 100}  # another micro-batch, same step
    assert not torch.equal(tokens(7), tokens(7, other_indices))
    assert on_policy.regenerates(7)


def test_the_training_rng_stream_and_modes_are_untouched(
    student: nn.Module, teacher: nn.Module
) -> None:
    on_policy = OnPolicy(fraction=1.0, max_new_tokens=5, prompt_length=4)
    student.train()
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    on_policy(text_batch(), step=0, student=student, teachers=[teacher])
    assert torch.equal(torch.rand(5), expected)
    assert student.training and not teacher.training


# --------------------------------------------------------------------------- the new batch
def test_labels_cover_exactly_the_generated_tokens(student: nn.Module) -> None:
    on_policy = OnPolicy(fraction=1.0, max_new_tokens=5, seed=3)
    batch = prompt_batch()
    new = on_policy(batch, step=0, student=student, teachers=[])
    assert set(new) == {"inputs", "labels", "index", "prompt_ids", "prompt_mask"}
    assert torch.equal(new["index"], batch["index"])
    input_ids, mask = new["inputs"]["input_ids"], new["inputs"]["attention_mask"]
    assert input_ids.shape == mask.shape == new["labels"].shape == (2, 9)
    assert torch.equal(input_ids[:, :4], batch["prompt_ids"])
    generated = input_ids[:, 4:]
    assert not torch.isin(generated, torch.tensor([EOS])).any()  # no early stop at this seed
    # by hand: positions 3..7 predict tokens 4..8 (the generated ones); the rest is ignored
    expected = torch.full((2, 9), IGNORE_INDEX)
    expected[:, 3:8] = generated
    assert torch.equal(new["labels"], expected)
    assert torch.equal(mask, torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9]))
    positions = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5, 6], list(range(9))])
    assert torch.equal(new["inputs"]["position_ids"], positions)


def test_a_left_padded_prompt_generates_as_the_unpadded_prompt(student: nn.Module) -> None:
    """Greedy (top_k=1) continuations and the training forward's logits at the generated
    positions do not depend on the prompt's left padding. In float64: the invariance is
    structural, so the logits are compared at assert_close's float64 defaults (rtol and atol
    1e-7; the two passes differ only in summation order) instead of a float32 tolerance."""
    student = copy.deepcopy(student).double()
    greedy = OnPolicy(fraction=1.0, max_new_tokens=5, top_k=1)
    padded = greedy(prompt_batch(), step=0, student=student, teachers=[])
    alone = {"prompt_ids": torch.tensor([[11, 12]]), "prompt_mask": torch.ones(1, 2).long()}
    unpadded = greedy(alone, step=0, student=student, teachers=[])
    assert torch.equal(padded["inputs"]["input_ids"][0, 2:], unpadded["inputs"]["input_ids"][0])
    with torch.no_grad():
        logits_padded = student(**padded["inputs"]).logits[0, 3:8]
        logits_alone = student(**unpadded["inputs"]).logits[0, 1:6]
    torch.testing.assert_close(logits_padded, logits_alone)


def reference_samples(
    model: nn.Module, prompt_ids: Tensor, seed: int, steps: int, temperature: float, top_k: int
) -> Tensor:
    """Ancestral sampling by full forward passes: softmax(logits / T) over the top k, one
    multinomial draw per step from the global generator seeded with ``seed``."""
    torch.manual_seed(seed)
    sequence = prompt_ids
    with torch.no_grad():
        for _ in range(steps):
            scores = model(input_ids=sequence).logits[:, -1].double() / temperature
            kth = scores.topk(top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
            token = torch.multinomial(scores.softmax(-1).float(), 1)
            sequence = torch.cat([sequence, token], dim=1)
    return sequence[:, prompt_ids.shape[1] :]


def test_sampling_follows_temperature_and_top_k_only(student: nn.Module) -> None:
    """The samples equal a plain sampler's at the same seed, although the model's own
    generation config asks for top-p and a repetition penalty (which must not apply)."""
    student.generation_config.top_p = 0.2
    student.generation_config.repetition_penalty = 5.0
    try:
        on_policy = OnPolicy(fraction=1.0, max_new_tokens=6, temperature=0.7, top_k=20, seed=4)
        batch = {"prompt_ids": torch.randint(3, VOCAB, (4, 5), generator=torch.Generator())}
        batch["prompt_mask"] = torch.ones_like(batch["prompt_ids"])
        new = on_policy(batch, step=2, student=student, teachers=[])
    finally:
        student.generation_config.top_p = None
        student.generation_config.repetition_penalty = None
    expected = reference_samples(
        student, batch["prompt_ids"], _derived_seed(4, 2, 1), 6, temperature=0.7, top_k=20
    )
    assert not torch.isin(expected, torch.tensor([EOS])).any()
    assert torch.equal(generated_tokens(new, 5), expected)


def test_tokens_after_the_first_eos_are_padding_with_ignored_labels() -> None:
    model = biased(tiny_llama(0), EOS, 2.5)  # eos has probability ~0.2 per token
    on_policy = OnPolicy(fraction=1.0, max_new_tokens=8, prompt_length=4, seed=1)
    new = on_policy(text_batch(rows=16), step=0, student=model, teachers=[])
    tokens, mask, labels = (
        new["inputs"]["input_ids"],
        new["inputs"]["attention_mask"],
        new["labels"],
    )
    stopped = 0
    for row in range(16):
        generated = tokens[row, 4:]
        eos_at = (generated == EOS).nonzero().reshape(-1)
        end = int(eos_at[0]) + 1 if len(eos_at) else 8  # the real generated tokens: [0, end)
        stopped += int(end < 8)
        assert mask[row].tolist() == [1] * (4 + end) + [0] * (8 - end)
        assert (generated[end:] == PAD).all()
        assert labels[row, 3 : 3 + end].tolist() == generated[:end].tolist()
        assert (labels[row, 3 + end :] == IGNORE_INDEX).all()
        assert (labels[row, :3] == IGNORE_INDEX).all()
    assert stopped >= 3  # some rows really stopped early, some did not
    assert stopped < 16


def test_when_every_row_stops_at_once_the_continuation_is_padded(student: nn.Module) -> None:
    model = biased(tiny_llama(0), EOS, 50.0)  # eos first, always
    new = OnPolicy(fraction=1.0, max_new_tokens=6)(
        prompt_batch(), step=0, student=model, teachers=[]
    )
    assert new["inputs"]["input_ids"][:, 4:].tolist() == [[EOS] + [PAD] * 5] * 2
    assert new["inputs"]["attention_mask"][:, 4:].tolist() == [[1] + [0] * 5] * 2
    expected = torch.full((2, 10), IGNORE_INDEX)
    expected[:, 3] = EOS
    assert torch.equal(new["labels"], expected)


def test_teacher_source_samples_from_the_first_teacher(
    student: nn.Module, teacher: nn.Module
) -> None:
    favourite = 7
    loud_teacher = biased(tiny_llama(1, hidden_size=48), favourite, 50.0).eval()
    batch = text_batch()
    sequence_kd = OnPolicy(fraction=1.0, max_new_tokens=5, source="teacher", prompt_length=4)
    new = sequence_kd(batch, step=0, student=student, teachers=[loud_teacher, teacher])
    assert (generated_tokens(new, 4) == favourite).all()
    on_policy = OnPolicy(fraction=1.0, max_new_tokens=5, prompt_length=4)
    own = on_policy(batch, step=0, student=student, teachers=[loud_teacher])
    assert not (generated_tokens(own, 4) == favourite).all()
    assert not loud_teacher.training


# --------------------------------------------------------------------------- the GKD loss
def dense_divergence(
    student_logits: Tensor, teacher_logits: Tensor, divergence: str, beta: float, t: float
) -> Tensor:
    log_p = torch.log_softmax(student_logits / t, -1)
    log_q = torch.log_softmax(teacher_logits / t, -1)
    if divergence == "reverse_kl":
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    else:  # JSD(β) = β KL(q ‖ m) + (1 − β) KL(p ‖ m), m = β q + (1 − β) p
        log_m = torch.logsumexp(
            torch.stack(
                [log_q + torch.log(torch.tensor(beta)), log_p + torch.log1p(torch.tensor(-beta))]
            ),
            0,
        )
        per_token = beta * (log_q.exp() * (log_q - log_m)).sum(-1) + (1 - beta) * (
            log_p.exp() * (log_p - log_m)
        ).sum(-1)
    return t * t * per_token


@pytest.mark.parametrize(("divergence", "beta"), [("reverse_kl", 0.5), ("jsd", 0.3)])
def test_gkd_loss_on_generated_tokens_matches_a_dense_float64_reference(
    student: nn.Module, teacher: nn.Module, divergence: str, beta: float
) -> None:
    batch = OnPolicy(fraction=1.0, max_new_tokens=6, seed=2)(
        prompt_batch(), step=0, student=student, teachers=[teacher]
    )
    labels = batch["labels"]
    student_hidden = last_hidden_state(student, batch["inputs"]).detach().requires_grad_()
    with torch.no_grad():
        teacher_hidden = last_hidden_state(teacher, batch["inputs"])
    student_weight = output_projection(student).weight.detach().clone().requires_grad_()
    teacher_weight = output_projection(teacher).weight.detach()
    loss = fused_linear_kd_loss(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        labels,
        divergence=divergence,
        beta=beta,
        temperature=2.0,
    )
    loss.backward()

    valid = labels != IGNORE_INDEX
    assert int(valid.sum()) == 12  # 2 rows x 6 generated tokens
    hidden64 = student_hidden.detach().double().requires_grad_()
    weight64 = student_weight.detach().double().requires_grad_()
    per_token = dense_divergence(
        hidden64[valid] @ weight64.T,
        teacher_hidden[valid].double() @ teacher_weight.double().T,
        divergence,
        beta,
        2.0,
    )
    reference = per_token.mean()
    reference.backward()
    # float32 against float64 on the same rounded inputs: the float32 error bound, not a
    # tolerance read off one CPU (an AMD EPYC was 1.8e-5 relative off, outside rtol=1e-5)
    tolerance = divergence_tolerance(
        hidden64[valid] @ weight64.T,
        teacher_hidden[valid].double() @ teacher_weight.double().T,
        temperature=2.0,
        divergence=divergence,
        beta=beta,
        scale=4.0,
        student_projection=(student_hidden[valid], student_weight),
        teacher_projection=(teacher_hidden[valid], teacher_weight),
    )
    torch.testing.assert_close(loss.double(), reference, rtol=0, atol=tolerance.loss)
    torch.testing.assert_close(
        student_hidden.grad.double(), hidden64.grad, rtol=0, atol=tolerance.hidden
    )
    torch.testing.assert_close(
        student_weight.grad.double(), weight64.grad, rtol=0, atol=tolerance.weight
    )
    assert (student_hidden.grad[~valid] == 0).all()


# --------------------------------------------------------------------------- FSDP2
def sharded_generation(out: Path) -> None:
    """One torchrun process: an FSDP2-sharded student samples from its process's prompts; the
    processes stop at different lengths, yet their all-gathers must stay paired."""
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = biased(tiny_llama(0), EOS, 4.0)  # eos likely within a few tokens
    fully_shard(model)
    new = OnPolicy(fraction=1.0, max_new_tokens=12, prompt_length=4)(
        text_batch(rows=1, seed=rank), step=0, student=model, teachers=[]
    )
    lengths = new["inputs"]["attention_mask"].sum(-1).tolist()
    (out / f"rank{rank}.json").write_text(json.dumps(lengths))
    end_process(0)


@pytest.mark.distributed
def test_fsdp_sharded_processes_that_stop_at_different_lengths_finish(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(port), __file__, str(tmp_path)]
    root = str(Path(__file__).resolve().parents[1])
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"},
        timeout=120,  # without synced generation the processes wait for each other forever
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lengths = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert lengths[0] != lengths[1]  # the processes really stopped at different steps


# --------------------------------------------------------------------------- in training
class Recording:
    """``on_policy`` that records the steps it is called at and raises KeyboardInterrupt
    (Ctrl-C) once, at training step ``interrupt_step``."""

    def __init__(self, inner: OnPolicy, interrupt_step: int | None = None) -> None:
        self.inner, self.interrupt_step = inner, interrupt_step
        self.steps: list[int] = []

    def __call__(self, batch: Any, *, step: int, student: nn.Module, teachers: Any) -> Any:
        if step == self.interrupt_step:
            self.interrupt_step = None
            raise KeyboardInterrupt
        self.steps.append(step)
        return self.inner(batch, step=step, student=student, teachers=teachers)


def text_samples(count: int, seed: int) -> list[dict[str, Tensor]]:
    batch = text_batch(rows=count, length=8, seed=seed)
    input_ids = batch["inputs"]["input_ids"]
    return [
        {
            "inputs": {"input_ids": input_ids[i], "attention_mask": torch.ones(8).long()},
            "labels": next_token_labels(input_ids[i]),
            "index": torch.tensor(i),
        }
        for i in range(count)
    ]


def gkd_run(
    run_dir: Path, on_policy: Any, *, resume: bool = False, init_seed: int = 0
) -> nn.Module:
    from torch.utils.data import DataLoader

    from torchkd.config import TrainConfig
    from torchkd.distiller import Distiller, Term
    from torchkd.train import fit

    student, teacher = tiny_llama(init_seed), tiny_llama(1, hidden_size=48)
    term = Term("gkd", "fused_linear_kd", {"divergence": "jsd", "beta": 0.5})
    distiller = Distiller(student, teacher, [term], on_policy=on_policy)
    train = DataLoader(
        text_samples(16, seed=0), batch_size=4, shuffle=True, generator=torch.Generator()
    )
    val = DataLoader(text_samples(4, seed=1), batch_size=4)
    config = TrainConfig.model_validate(
        {
            "epochs": 2,
            "grad_accum_steps": 2,
            "optimizer": {"name": "adamw", "lr": 0.01},
            "device": "cpu",
            "seed": 3,
            "progress": False,
        }
    )
    fit(distiller, train, val, config, run_dir, resume=resume)
    return student


def test_training_with_on_policy_resumes_exactly(tmp_path: Path) -> None:
    """Four optimizer steps of two micro-batches, steps 0 and 3 on-policy; a run stopped by
    Ctrl-C at step 2 and resumed (from other initial weights) ends bit-identical."""
    on_policy = OnPolicy(fraction=0.5, max_new_tokens=4, prompt_length=3, seed=1)
    assert [on_policy.regenerates(step) for step in range(4)] == [True, False, False, True]
    recording = Recording(on_policy)
    straight = gkd_run(tmp_path / "straight", recording)
    assert recording.steps == [0, 0, 1, 1, 2, 2, 3, 3]  # every micro-batch, in training only
    supervised = gkd_run(tmp_path / "supervised", None)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(straight.parameters(), supervised.parameters(), strict=True)
    )
    with pytest.raises(KeyboardInterrupt):
        gkd_run(tmp_path / "resumed", Recording(on_policy, interrupt_step=2))
    resumed = gkd_run(tmp_path / "resumed", on_policy, resume=True, init_seed=5)
    straight_state, resumed_state = straight.state_dict(), resumed.state_dict()
    assert straight_state.keys() == resumed_state.keys()
    for name, value in straight_state.items():
        assert torch.equal(value, resumed_state[name]), name


if __name__ == "__main__":
    sharded_generation(Path(sys.argv[1]))
