"""The one error table: user errors reach the user as 4xx/503 and exit 2, anything else
(a bug) as 500 and exit 1; engine input errors count as user errors."""

import pytest

from auditor import errors
from auditor.errors import (ConflictError, InternalError, LockedError, NotFoundError, SchemaError, StoreError,
                            UserError, outcome)
from pspc.data.training_set import TrainingSetError
from pspc.errors import InputError


@pytest.mark.parametrize("exc, status", [
    (NotFoundError("no run 9"), 404),
    (ConflictError("run 3 is still being written"), 409),
    (LockedError("locked"), 503),
    (SchemaError("run `auditor db upgrade`"), 409),
    (StoreError("not a DuckDB file"), 400),
    (UserError("--num must be >= 1"), 400),
    (InputError("t must be > 0"), 400),
    (TrainingSetError("bad IDX magic"), 400),
])
def test_user_errors_keep_their_message_and_exit_2(exc, status):
    result = outcome(exc)
    assert (result.status, result.exit_code, result.user) == (status, errors.EXIT_USAGE, True)


def test_locked_store_asks_to_retry():
    assert dict(outcome(LockedError("locked")).headers) == {"Retry-After": "1"}


def test_a_schema_the_user_cannot_fix_is_a_500_with_its_message():
    result = outcome(SchemaError("alembic_version holds 2 revisions (branched schema)"))
    assert result.status == 500 and result.user


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("x"), RuntimeError("boom"), InternalError("broken"),
                                 ZeroDivisionError()])
def test_anything_else_is_internal(exc):
    result = outcome(exc)
    assert (result.status, result.exit_code, result.user) == (500, errors.EXIT_INTERNAL, False)


def test_user_errors_are_value_errors_for_library_callers():
    assert issubclass(UserError, ValueError) and issubclass(InputError, ValueError)
    assert not issubclass(InternalError, ValueError)
    assert issubclass(NotFoundError, StoreError)  # callers catching StoreError see unknown ids too


def test_the_table_lists_subclasses_before_their_bases():
    classes = [cls for cls, _ in errors.ERROR_TABLE]
    for i, cls in enumerate(classes):
        assert not any(issubclass(later, cls) and later is not cls for later in classes[i + 1:]), cls
