"""Signals: what a method applies at each state (NLL of a target, a teacher's distribution, a reward)."""

from __future__ import annotations

import torch

from .logprobs import completion_token_logits, entropy, masked_mean, token_divergence, token_logprobs
from .states import StateBatch


# ---------------------------------------------------------------------------------------------
# NLL signal (core helper): next-token negative log-likelihood of the state's next (gold) token.
# ---------------------------------------------------------------------------------------------


class NLLSignal:
    """Mean next-token NLL over the completion tokens of the batch (SFT).

    ``loss_reduction = "token_mean"`` tells the loop that the loss is a mean over completion
    tokens, so it re-weights micro-batches by their token counts: the optimiser step then
    minimises the mean over all completion tokens of the step, whatever the split over
    processes and gradient accumulation.
    """

    loss_reduction = "token_mean"
    needs_teacher = False
    needs_reference = False

    def __call__(self, policy, batch: StateBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets = completion_token_logits(policy, batch)
        if targets.numel() == 0:  # e.g. every learner sample filtered out: zero loss, zero gradient
            return logits.sum() * 0.0, {"nll": 0.0, "token_acc": 0.0}
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="mean")
        with torch.no_grad():
            acc = (logits.argmax(-1) == targets).float().mean()
        return nll, {"nll": float(nll.detach()), "token_acc": float(acc)}


# ---------------------------------------------------------------------------------------------
# On-policy signals (on-policy helper): teacher KL (distillation) and reward (GRPO-style RL).
# ---------------------------------------------------------------------------------------------

import time as _time  # noqa: E402


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _model_dir(tok) -> str:
    return str(getattr(tok, "name_or_path", "") or "<unnamed tokenizer>")


def check_same_tokenizer(student_tok, teacher_tok, student_dir=None, teacher_dir=None) -> None:
    """Raise ``ValueError`` unless the two tokenizers map the same strings to the same ids.

    Compares ``get_vocab()`` (including added tokens) and the special tokens (eos, pad, bos, unk
    and the additional special tokens). The message names both model directories and the first
    differing token. Distillation compares distributions id by id, so any difference is fatal.
    """
    sdir = str(student_dir) if student_dir is not None else _model_dir(student_tok)
    tdir = str(teacher_dir) if teacher_dir is not None else _model_dir(teacher_tok)
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv != tv:
        for token in sorted(set(sv) | set(tv)):
            if sv.get(token) != tv.get(token):
                raise ValueError(
                    f"teacher and student tokenizers differ: token {token!r} has id {sv.get(token)} in the "
                    f"student ({sdir}) but {tv.get(token)} in the teacher ({tdir}) (vocab sizes {len(sv)} vs "
                    f"{len(tv)}); distillation needs the same vocabulary"
                )
    for attr in ("eos_token", "pad_token", "bos_token", "unk_token"):
        a, b = getattr(student_tok, attr, None), getattr(teacher_tok, attr, None)
        if str(a) != str(b):
            raise ValueError(
                f"teacher and student tokenizers differ: {attr} is {a!r} in the student ({sdir}) but "
                f"{b!r} in the teacher ({tdir})"
            )
    sa = [str(t) for t in (getattr(student_tok, "additional_special_tokens", None) or [])]
    ta = [str(t) for t in (getattr(teacher_tok, "additional_special_tokens", None) or [])]
    if sa != ta:
        diff = next((x for x, y in zip(sa, ta) if x != y), (sa + ta)[min(len(sa), len(ta))])
        raise ValueError(
            f"teacher and student tokenizers differ: additional special token {diff!r} (student {sdir}: "
            f"{len(sa)} tokens, teacher {tdir}: {len(ta)})"
        )


class TeacherKL:
    """On-policy distillation signal: per-token divergence to a teacher at every completion state.

    ``TeacherKL(signal_cfg, teacher_model, tokenizer=None)``. ``signal_cfg`` keys: ``direction``
    (reverse | forward | jsd, default reverse), ``beta`` (jsd, default 0.5), ``estimator``
    (full | sampled, default full). The teacher is put in eval mode, frozen, and moved to the
    batch's device on first use; it scores the same states under ``torch.no_grad``. The registry
    should call :func:`check_same_tokenizer` with both model directories before building this.

    * ``full``: loss = masked_mean over completion tokens of the exact divergence over the whole
      vocabulary at each state; the gradient flows through the student distribution only (the
      state distribution itself is not differentiated, as in GKD / on-policy distillation).
    * ``sampled`` (reverse only): the per-token log-ratio ``log p_s(y_t) - log p_t(y_t)`` of the
      sampled token is a (negative) per-token reward with no future credit (discount 0):
      ``loss = masked_mean(stopgrad(logratio) * log p_s(y_t))``. For y_t ~ p_s its gradient's
      expectation is ``grad KL(p_s || p_t)`` at each state (E[grad log p_s] = 0), so it is an
      unbiased, higher-variance estimate of the ``full`` reverse-KL gradient, valid only when the
      states are fresh samples of the student at temperature 1.

    Metrics: ``kl`` (exact divergence of the configured direction, mean per completion token; for
    ``sampled`` the exact reverse KL, computed without grad), ``kl_sampled`` (sampled estimator
    only: mean log-ratio, the k1 estimate), ``entropy`` (student), ``teacher_nll`` (mean teacher
    NLL of the realised tokens), ``teacher_time_s``, ``completion_tokens``.
    """

    loss_reduction = "token_mean"
    needs_teacher = True
    needs_reference = False

    def __init__(self, signal_cfg: dict, teacher_model, tokenizer=None):
        self.direction = signal_cfg.get("direction", "reverse") or "reverse"
        self.beta = float(signal_cfg.get("beta", 0.5) if signal_cfg.get("beta") is not None else 0.5)
        self.estimator = signal_cfg.get("estimator", "full") or "full"
        if self.direction not in ("reverse", "forward", "jsd"):
            raise ValueError(f"teacher_kl: unknown direction {self.direction!r} (reverse | forward | jsd)")
        if self.estimator not in ("full", "sampled"):
            raise ValueError(f"teacher_kl: unknown estimator {self.estimator!r} (full | sampled)")
        if self.estimator == "sampled" and self.direction != "reverse":
            raise ValueError(
                "teacher_kl: the sampled estimator estimates the reverse KL gradient only; "
                f"direction {self.direction!r} needs estimator: full"
            )
        if self.direction == "jsd" and not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"teacher_kl: beta must be in [0, 1], got {self.beta}")
        self.teacher = teacher_model
        self.teacher.eval()
        self.teacher.requires_grad_(False)
        self.tokenizer = tokenizer

    def _teacher_logits(self, batch: StateBatch) -> torch.Tensor:
        device = batch.input_ids.device
        try:
            tdev = next(self.teacher.parameters()).device
        except StopIteration:  # pragma: no cover
            tdev = device
        if tdev != device:
            self.teacher.to(device)
        self.teacher.eval()
        with torch.no_grad():
            logits, _ = completion_token_logits(self.teacher, batch)
        return logits

    def __call__(self, policy, batch: StateBatch):
        device = batch.input_ids.device
        # only the N completion states are kept: [N, V] instead of [B, T-1, V]
        s, y = completion_token_logits(policy, batch)
        _sync(device)
        t0 = _time.perf_counter()
        t = self._teacher_logits(batch)
        _sync(device)
        teacher_time = _time.perf_counter() - t0
        if t.shape != s.shape:
            raise ValueError(
                f"teacher_kl: teacher logits {tuple(t.shape)} and student logits {tuple(s.shape)} "
                "differ (different vocabulary sizes?)"
            )
        n_tok = int(y.numel())
        metrics = {"teacher_time_s": teacher_time, "completion_tokens": float(n_tok)}
        if n_tok == 0:  # e.g. a filtered-empty batch: zero loss, zero gradient
            metrics.update(kl=0.0, entropy=0.0, teacher_nll=0.0)
            return s.sum() * 0.0, metrics
        ones = torch.ones(n_tok, device=s.device, dtype=s.dtype)
        lt_y = token_logprobs(t, y)
        if self.estimator == "full":
            div = token_divergence(s, t, self.direction, self.beta)
            loss = masked_mean(div, ones)
            kl_value = float(loss.detach())
        else:
            ls_y = token_logprobs(s, y)
            logratio = (ls_y - lt_y).detach()
            loss = masked_mean(logratio * ls_y, ones)
            with torch.no_grad():
                kl_value = float(token_divergence(s.detach(), t, "reverse").mean())
            metrics["kl_sampled"] = float(logratio.mean())
        with torch.no_grad():
            metrics.update(
                kl=kl_value,
                entropy=float(entropy(s.detach()).mean()),
                teacher_nll=float(-lt_y.mean()),
            )
        return loss, metrics


def group_advantages(rewards, group_size: int, normalize_std: bool = True, eps: float = 1e-4):
    """GRPO advantages of consecutive groups of ``group_size`` rewards.

    ``A_i = r_i - mean(group)``, divided by ``std(group) + eps`` when ``normalize_std`` (the
    sample standard deviation, n-1, as TRL's GRPO; a group of one has advantage 0). A group whose
    rewards are all equal gets advantage exactly 0. Returns ``(advantages [N], zero_var [N/G] bool)``.
    """
    r = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1)
    if group_size < 1 or r.numel() % group_size:
        raise ValueError(f"group_advantages: {r.numel()} rewards do not split into groups of {group_size}")
    groups = torch.arange(r.numel()) // group_size
    return group_advantages_by_id(r, groups, normalize_std, eps)


def group_advantages_by_id(rewards, groups, normalize_std: bool = True, eps: float = 1e-4):
    """As :func:`group_advantages` with explicit group ids (groups may differ in size)."""
    r = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1)
    g = torch.as_tensor(groups).reshape(-1).to(r.device)
    _, inv = torch.unique(g, return_inverse=True)
    n_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    count = torch.zeros(n_groups, device=r.device).index_add_(0, inv, torch.ones_like(r))
    total = torch.zeros(n_groups, device=r.device).index_add_(0, inv, r)
    mean = total / count
    centred = r - mean[inv]
    sq = torch.zeros(n_groups, device=r.device).index_add_(0, inv, centred**2)
    zero_var = sq == 0
    adv = torch.where(zero_var[inv], torch.zeros_like(r), centred)
    if normalize_std:
        std = torch.sqrt(sq / (count - 1).clamp_min(1.0))
        adv = adv / (std[inv] + eps)
    return adv, zero_var


class RewardSignal:
    """GRPO-style policy gradient with group-normalised advantages.

    ``RewardSignal(signal_cfg, reference_model=None)``. ``signal_cfg`` keys: ``reward`` (gsm8k),
    ``answer_mode``, ``format_reward``, ``normalize_std`` (default true), ``clip_eps`` (0.2),
    ``updates_per_batch`` (1), ``kl_coef`` (0.0). ``reference_model``: the frozen init model, needed
    when ``kl_coef > 0`` (and then ``kl_to_init`` is logged; without one that metric is omitted).

    Rewards: recomputed here from ``batch.extras["completions"]`` and ``batch.answers`` with this
    config (``reward_time_s``); when the batch has no decoded completions, ``extras["rewards"]`` is
    used. Groups: ``extras["group"]`` (rows of one prompt). Advantages: :func:`group_advantages_by_id`.

    Loss, per completion token, averaged over all completion tokens of the micro-batch
    (token-level ``masked_mean``, as DAPO / TRL ``loss_type="dapo"``):
    ``-min(r*A, clip(r, 1-eps, 1+eps)*A)`` with ``r = exp(logp - old_logp)``; ``old_logp`` is
    ``extras["old_logprobs"]`` when the rollout batch is reused (recorded at sampling time by
    :class:`LearnerStates`), else ``logp.detach()`` so ``r == 1`` and the gradient is exactly
    REINFORCE with the group baseline: ``-masked_mean(A * grad logp)``. Plus ``kl_coef`` times the
    masked mean of the k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` of KL(policy || ref).

    Metrics: ``reward``, ``accuracy``, ``zero_var_frac`` (groups with all-equal rewards),
    ``completion_len``, ``entropy``, ``clip_frac``, ``kl_to_init`` (with a reference model),
    ``reward_time_s``, ``adv_abs_mean``.
    """

    loss_reduction = "token_mean"
    needs_teacher = False

    def __init__(self, signal_cfg: dict, reference_model=None):
        if (signal_cfg.get("reward", "gsm8k") or "gsm8k") != "gsm8k":
            raise ValueError(f"reward: unknown reward {signal_cfg.get('reward')!r}")
        from statepost import gsm8k

        self.answer_mode = signal_cfg.get("answer_mode", "hash_then_last") or "hash_then_last"
        if self.answer_mode not in gsm8k.ANSWER_MODES:
            raise ValueError(f"reward: unknown answer_mode {self.answer_mode!r}")
        self.format_reward = float(signal_cfg.get("format_reward", 0.0) or 0.0)
        self.normalize_std = bool(signal_cfg.get("normalize_std", True))
        self.clip_eps = float(signal_cfg.get("clip_eps", 0.2))
        self.updates_per_batch = int(signal_cfg.get("updates_per_batch", 1) or 1)
        self.kl_coef = float(signal_cfg.get("kl_coef", 0.0) or 0.0)
        self.eps = float(signal_cfg.get("adv_eps", 1e-4))
        self.reference = reference_model
        self.needs_reference = self.kl_coef > 0  # the registry may pass the init model anyway (kl_to_init metric)
        if self.kl_coef > 0 and reference_model is None:
            raise ValueError("reward: kl_coef > 0 needs the reference (init) model")
        if reference_model is not None:
            reference_model.eval()
            reference_model.requires_grad_(False)

    def rewards(self, batch: StateBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rewards [B], correct [B])`` of the batch's completions."""
        from statepost import gsm8k

        texts = batch.extras.get("completions")
        if texts is not None:
            if len(texts) != len(batch.answers):
                raise ValueError(f"reward: {len(texts)} completions but {len(batch.answers)} answers")
            r = [gsm8k.reward(t, a, self.answer_mode, self.format_reward) for t, a in zip(texts, batch.answers)]
            c = [1.0 if gsm8k.is_correct(t, a, self.answer_mode) else 0.0 for t, a in zip(texts, batch.answers)]
            return torch.tensor(r, dtype=torch.float32), torch.tensor(c, dtype=torch.float32)
        if "rewards" not in batch.extras:
            raise ValueError("reward: the batch carries neither extras['completions'] nor extras['rewards']")
        r = batch.extras["rewards"].detach().float().cpu()
        c = batch.extras.get("correct")
        return r, (c.detach().float().cpu() if c is not None else (r >= 1.0).float())

    def __call__(self, policy, batch: StateBatch):
        device = batch.input_ids.device
        t0 = _time.perf_counter()
        rewards, correct = self.rewards(batch)
        groups = batch.extras.get("group")
        if groups is None:
            raise ValueError("reward: the batch has no extras['group'] (learner states with samples_per_prompt)")
        adv, zero_var = group_advantages_by_id(rewards, groups.detach().cpu(), self.normalize_std, self.eps)
        reward_time = _time.perf_counter() - t0

        keep = batch.completion_mask[:, 1:] > 0  # [B, T-1]: the target of position t is token t+1
        row = keep.nonzero()[:, 0]  # batch row of each completion token
        logits, y = completion_token_logits(policy, batch)  # [N, V], [N]
        logp = token_logprobs(logits, y)  # [N]
        n_tok = int(y.numel())
        ones = torch.ones(n_tok, device=logp.device, dtype=logp.dtype)
        adv_tok = adv.to(logp.device)[row]
        old = batch.extras.get("old_logprobs")
        if old is not None:
            old_logp = old.to(logp.device)[:, 1:][keep].to(logp.dtype)
        else:
            old_logp = logp.detach()
        ratio = torch.exp(logp - old_logp)
        unclipped = ratio * adv_tok
        clipped = torch.clamp(ratio, 1.0 - self.clip_eps, 1.0 + self.clip_eps) * adv_tok
        loss = masked_mean(-torch.minimum(unclipped, clipped), ones)
        metrics = {"completion_tokens": float(n_tok)}
        if self.reference is not None and n_tok:
            rdev = next(self.reference.parameters()).device
            if rdev != device:
                self.reference.to(device)
            with torch.no_grad():
                ref_logits, _ = completion_token_logits(self.reference, batch)
                ref_logp = token_logprobs(ref_logits, y)
                del ref_logits
            delta = ref_logp - (logp if self.kl_coef > 0 else logp.detach())
            k3 = torch.exp(delta) - delta - 1.0
            kl = masked_mean(k3, ones)
            if self.kl_coef > 0:
                loss = loss + self.kl_coef * kl
            metrics["kl_to_init"] = float(kl.detach())
        with torch.no_grad():
            is_clipped = ((ratio < 1.0 - self.clip_eps) & (adv_tok < 0)) | ((ratio > 1.0 + self.clip_eps) & (adv_tok > 0))
            metrics.update(
                reward=float(rewards.mean()) if rewards.numel() else 0.0,
                accuracy=float(correct.mean()) if correct.numel() else 0.0,
                zero_var_frac=float(zero_var.float().mean()) if zero_var.numel() else 0.0,
                completion_len=float(keep.sum(1).float().mean()),
                entropy=float(entropy(logits.detach()).mean()) if n_tok else 0.0,
                clip_frac=float(is_clipped.float().mean()) if n_tok else 0.0,
                reward_time_s=reward_time,
                adv_abs_mean=float(adv.abs().mean()) if adv.numel() else 0.0,
            )
        return loss, metrics
