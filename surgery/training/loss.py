"""The distillation loss, summed over positions so that any split of a global batch adds up to the same value.

For each position t = 0..L-2 of a block (predicting token t+1):
    forward:  KL(P_teacher ‖ P_student) = Σ_v p_t (log p_t − log p_s), both at temperature T, times T²
    reverse:  KL(P_student ‖ P_teacher), also times T²
plus A · the student's cross-entropy of the actual next token at T = 1. With a trimmed student the teacher's logits
are restricted to the kept ids (`kept`, renormalized by the softmax) and the student uses its first K rows.
The step's loss is this sum over the B blocks of the step divided by B·(L−1).
"""

from __future__ import annotations

LOSSES = ("forward-kl", "reverse-kl")


def kd_loss_sum(student_logits, teacher_logits, input_ids, *, temperature: float = 1.0, loss: str = "forward-kl",
                lm_weight: float = 0.0, kept=None):
    """Σ over blocks and positions 0..L-2 of the KD term (+ A·CE), a 0-dim float32 tensor with gradient.

    student_logits [b, L, V_s], teacher_logits [b, L, V_t] (no gradient), input_ids [b, L] in the student's ids;
    `kept` (a LongTensor of K teacher ids) for a trimmed student."""
    import torch

    s = student_logits[:, :-1].float()
    t = teacher_logits[:, :-1].float()
    if kept is not None:
        t = t.index_select(-1, kept)
        s = s[..., : len(kept)]
    log_s = torch.log_softmax(s / temperature, dim=-1)
    log_t = torch.log_softmax(t / temperature, dim=-1)
    if loss == "forward-kl":
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    elif loss == "reverse-kl":
        kl = (log_s.exp() * (log_s - log_t)).sum(-1)
    else:
        raise ValueError(f"loss {loss}: one of {', '.join(LOSSES)}")
    total = kl.sum() * temperature ** 2
    if lm_weight:
        labels = input_ids[:, 1:]
        log_s1 = torch.log_softmax(s, dim=-1) if temperature != 1 else log_s
        nll = -log_s1.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        total = total + lm_weight * nll.sum()
    return total
