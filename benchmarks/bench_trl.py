"""TRL's trainers as benchmark arms for benchmarks/benchmark.py (TRL is a benchmark-only dependency).

Each builder returns ``step() -> {"total_s", ...split}``: one optimiser step of the trainer, driven
as ``Trainer``'s inner loop drives it (next batch from the trainer's own dataloader,
``trainer.training_step``, gradient clipping through its accelerator, its optimiser and schedule,
``zero_grad``); callbacks, logging and saving are left out. The model, tokenizer, teacher and
batch shapes are the caller's, so both sides do the same work.
"""

from __future__ import annotations

import os
import time
import warnings

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore", module="trl")


def _common(out_dir, batch_size: int, lr: float) -> dict:
    # fp32 on the CPU as our loop runs there; no gradient checkpointing (TRL's default is on, ours off)
    import torch

    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(out_dir), per_device_train_batch_size=batch_size, learning_rate=lr, max_steps=10**6,
        gradient_checkpointing=False, bf16=cuda, use_cpu=not cuda, report_to="none", save_strategy="no",
        logging_strategy="no", lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )


def _driver(trainer, timers: dict[str, list]):
    """``step()`` for a built trainer: Trainer's inner loop for one optimiser step, timed."""
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps  # set by Trainer's loop
    batches = iter(trainer.get_train_dataloader())
    model = trainer.model

    def step() -> dict:
        for v in timers.values():
            v.clear()
        t0 = time.perf_counter()
        inputs = next(batches)
        model.train()
        labels = inputs.get("labels") if isinstance(inputs, dict) else None
        n_items = (labels[..., 1:] != -100).sum() if labels is not None else None
        trainer.training_step(model, inputs, n_items)
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad(set_to_none=True)
        out = {"total_s": time.perf_counter() - t0}
        out.update({k: sum(v) for k, v in timers.items()})
        return out

    return trainer, step


def _timed(timers: list, fn):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            timers.append(time.perf_counter() - t0)

    return wrapper


def _hook_time(module, timers: list) -> None:
    """Time every forward of ``module`` (the teacher) into ``timers``."""
    start = []
    module.register_forward_pre_hook(lambda m, a: start.append(time.perf_counter()))
    module.register_forward_hook(lambda m, a, o: timers.append(time.perf_counter() - start.pop()))


def sft(model, tokenizer, examples: list[tuple[list[int], int]], batch_size: int, lr: float, out_dir):
    """SFTTrainer on pre-tokenized examples ``(ids, prompt_len)``: loss on the completion tokens only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_dict({
        "input_ids": [ids for ids, _ in examples],
        "completion_mask": [[0] * n + [1] * (len(ids) - n) for ids, n in examples],
    })
    args = SFTConfig(**_common(out_dir, batch_size, lr), max_length=None, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    return _driver(trainer, {})


def distillation(model, teacher, tokenizer, prompts: list[str], batch_size: int, new_tokens: int, lr: float,
                 out_dir):
    """TRL's on-policy distillation trainer (``DistillationTrainer``): reverse KL (beta 1) to ``teacher``
    on the student's own samples at temperature 1; split: generation / teacher forward / the rest."""
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    args = DistillationConfig(
        **_common(out_dir, batch_size, lr), max_completion_length=new_tokens, temperature=1.0, top_p=1.0,
        top_k=0, beta=1.0, use_vllm=False, log_completions=False,
    )
    trainer = DistillationTrainer(
        model=model, teacher_model=teacher, args=args, train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
    )
    timers = {"generation_s": [], "teacher_s": []}
    trainer._generate = _timed(timers["generation_s"], trainer._generate)
    _hook_time(trainer.teacher_model, timers["teacher_s"])
    return _driver(trainer, timers)


def grpo(model, tokenizer, prompts: list[str], answers: list[str], reward_fn, group: int, prompts_per_step: int,
         new_tokens: int, lr: float, out_dir):
    """GRPOTrainer: ``group`` samples per prompt, ``prompts_per_step`` prompts per step, no KL (beta 0),
    the token-level ("dapo") loss, one update per generation; split: generation / rewards / the rest."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        **_common(out_dir, prompts_per_step * group, lr), num_generations=group, max_completion_length=new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", num_iterations=1, steps_per_generation=1,
        use_vllm=False, log_completions=False, mask_truncated_completions=False,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward_fn, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": prompts, "answer": answers}),
    )
    timers = {"generation_s": [], "reward_s": []}
    trainer._generate = _timed(timers["generation_s"], trainer._generate)
    trainer._calculate_rewards = _timed(timers["reward_s"], trainer._calculate_rewards)
    return _driver(trainer, timers)
