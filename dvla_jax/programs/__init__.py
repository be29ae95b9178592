"""The programs the lanes run: the jitted step functions (`steps`), the components bundle a
run builds once (`builders.Components`: env groups, model, optimizer, compiled functions) and
evaluation on fixed seeds (`evaluation`).

Layering: envs, models, rl, parallel, memory, config < programs < swimlanes < training <
main, evaluate. The lanes (`dvla_jax.swimlanes`) import this package, never `training`.
"""
