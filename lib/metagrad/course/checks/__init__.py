"""Automatic checks for the course exercises: one `check_<exercise>(student_function)` per exercise.

One module per notebook (`nb00` … `nb09`), all sharing the diagnosis helpers of `_diagnose`. In a
notebook: `from metagrad.course import checks` then `checks.check_<exercise>(<exercise>)`. Each check
compares the student's function with a reference on random and edge-case inputs; on success it prints one
line starting with `✓`; otherwise it raises `ExerciseCheckFailed` with one or two sentences saying
what is wrong and, when the wrong answer matches a known mistake, which mistake.
"""

from __future__ import annotations

from typing import Any

from metagrad.course.checks._diagnose import CHECKS, ExerciseCheckFailed, all_exercises, reset_results, results
from metagrad.course.checks.nb00 import check_hvp, check_magic_box, check_score_function_gradient, check_score_function_hessian
from metagrad.course.checks.nb01 import check_discounted_occupancy, check_policy_evaluation, check_truncated_occupancy
from metagrad.course.checks.nb02 import (
    check_occupancy_policy_gradient,
    check_reinforce_gradient,
    check_reward_to_go,
)
from metagrad.course.checks.nb03 import (
    check_expected_surrogate_hessian,
    check_inner_step,
    check_missing_hessian_terms,
)
from metagrad.course.checks.nb04 import check_doubly_robust, check_dr_log_ratio_gradient, check_step_importance_sampling
from metagrad.course.checks.nb05 import check_on_policy_importance_sampling, check_dice_objective, check_dice_hessian, check_loaded_dice
from metagrad.course.checks.nb06 import (
    check_taypo2, check_taypo_k, check_taypo1_dropped_terms,
)
from metagrad.course.checks.nb07 import (
    check_squared_bias, check_choose_estimator,
)
from metagrad.course.checks.nb08 import (
    check_sampled_inner_step, check_task_meta_gradient, policy_classes,
    check_hessian_spread_over_actions, check_log_linear_hessian,
)
from metagrad.course.checks.nb09 import check_maml_objective_hessian, check_off_policy_inner_step, check_taypo_terms

#: Every exercise of the course, in course order.
EXERCISES: list[str] = all_exercises()


def describe() -> dict[str, Any]:
    """Exercise name -> notebook number (for tools)."""
    return {name: CHECKS[name] for name in EXERCISES}


__all__ = ["CHECKS", "EXERCISES", "ExerciseCheckFailed", "all_exercises", "describe", "reset_results", "results",
           'check_hvp',
           'check_score_function_gradient',
           'check_score_function_hessian',
           'check_magic_box',
           'check_policy_evaluation',
           'check_discounted_occupancy',
           'check_truncated_occupancy',
           'check_reward_to_go',
           'check_reinforce_gradient',
           'check_occupancy_policy_gradient',
           'check_inner_step',
           'check_missing_hessian_terms',
           'check_expected_surrogate_hessian',
           'check_step_importance_sampling',
           'check_doubly_robust',
           'check_dr_log_ratio_gradient',
           'check_on_policy_importance_sampling',
           'check_dice_objective',
           'check_dice_hessian',
           'check_loaded_dice',
           'check_taypo2',
           'check_taypo_k',
           'check_taypo1_dropped_terms',
           'check_squared_bias',
           'check_choose_estimator',
           'check_sampled_inner_step',
           'check_task_meta_gradient',
           'policy_classes',
           'check_hessian_spread_over_actions',
           'check_log_linear_hessian',
           'check_taypo_terms',
           'check_maml_objective_hessian',
           'check_off_policy_inner_step',
           ]
