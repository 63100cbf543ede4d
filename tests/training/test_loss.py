"""The KD loss (distill/loss.py) equals a reference written out position by position in float64."""

from __future__ import annotations

import math

import pytest

from surgery.training.loss import kd_loss_sum

torch = pytest.importorskip("torch")


def reference(student, teacher, ids, temperature, loss, lm_weight, kept=None):
    total = 0.0
    b, length, _ = student.shape
    for row in range(b):
        for t in range(length - 1):
            s, q = student[row, t].double(), teacher[row, t].double()
            if kept is not None:
                q, s = q[kept], s[: len(kept)]
            ps = [math.exp(v) for v in (s / temperature).tolist()]
            pt = [math.exp(v) for v in (q / temperature).tolist()]
            zs, zt = sum(ps), sum(pt)
            ps, pt = [p / zs for p in ps], [p / zt for p in pt]
            if loss == "forward-kl":
                kl = sum(a * (math.log(a) - math.log(c)) for a, c in zip(pt, ps))
            else:
                kl = sum(c * (math.log(c) - math.log(a)) for a, c in zip(pt, ps))
            total += kl * temperature ** 2
            if lm_weight:
                p1 = [math.exp(v) for v in s.tolist()]
                total += lm_weight * -math.log(p1[int(ids[row, t + 1])] / sum(p1))
    return total


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("loss", ["forward-kl", "reverse-kl"])
@pytest.mark.parametrize("lm_weight", [0.0, 0.3])
def test_the_loss_sum_equals_the_reference(temperature, loss, lm_weight):
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=generator) * 3, torch.randn(2, 5, 11, generator=generator) * 3
    ids = torch.randint(0, 11, (2, 5), generator=generator)
    got = kd_loss_sum(student, teacher, ids, temperature=temperature, loss=loss, lm_weight=lm_weight)
    assert float(got) == pytest.approx(reference(student, teacher, ids, temperature, loss, lm_weight), rel=1e-6)


def test_a_trimmed_student_is_compared_over_the_kept_ids_and_a_copy_costs_zero():
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(1, 6, 20, generator=generator)
    kept = torch.tensor([0, 3, 4, 9, 15, 19])
    student = torch.cat([teacher[..., kept], torch.full((1, 6, 2), 50.0)], -1)  # 2 padding rows, never read
    ids = torch.randint(0, 6, (1, 6), generator=generator)
    assert float(kd_loss_sum(student, teacher, ids, kept=kept)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(1, 6, 8, generator=generator)
    assert float(kd_loss_sum(other, teacher, ids, kept=kept, lm_weight=0.5)) == pytest.approx(
        reference(other, teacher, ids, 1.0, "forward-kl", 0.5, kept.tolist()), rel=1e-6)


def test_the_gradient_reaches_the_student_only():
    student = torch.randn(1, 4, 7, requires_grad=True)
    teacher = torch.randn(1, 4, 7)
    kd_loss_sum(student, teacher, torch.zeros(1, 4, dtype=torch.long)).backward()
    assert student.grad is not None and student.grad[:, :-1].abs().sum() > 0 and student.grad[:, -1].abs().sum() == 0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_written_out_gradient_equals_autograd_through_log_softmax(temperature):
    generator = torch.Generator().manual_seed(2)
    student = (torch.randn(2, 6, 13, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(2, 6, 13, generator=generator, dtype=torch.float64) * 2
    ids = torch.zeros(2, 6, dtype=torch.long)
    (got,) = torch.autograd.grad(kd_loss_sum(student, teacher, ids, temperature=temperature).double(), student)
    log_s = torch.log_softmax(student[:, :-1] / temperature, -1)
    log_t = torch.log_softmax(teacher[:, :-1] / temperature, -1)
    (want,) = torch.autograd.grad((log_t.exp() * (log_t - log_s)).sum() * temperature ** 2, student)
    assert torch.allclose(got, want, atol=1e-6)
