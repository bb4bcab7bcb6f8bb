"""nanoserve's default OpenMP wait settings (nanoserve/__init__.py): a short spin unless the user chose."""

from nanoserve import DEFAULT_OMP_ENV, apply_default_omp_env


def test_unset_environment_gets_a_short_spin_then_sleep() -> None:
    env: dict[str, str] = {}
    apply_default_omp_env(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}
    assert env == DEFAULT_OMP_ENV


def test_a_users_wait_policy_wins_and_gets_no_spin_count() -> None:
    for policy in ("PASSIVE", "ACTIVE"):
        env = {"OMP_WAIT_POLICY": policy}
        apply_default_omp_env(env)
        assert env == {"OMP_WAIT_POLICY": policy}  # PASSIVE alone means no spinning in libgomp


def test_a_users_spin_count_wins() -> None:
    env = {"GOMP_SPINCOUNT": "0"}
    apply_default_omp_env(env)
    assert env == {"GOMP_SPINCOUNT": "0"}
