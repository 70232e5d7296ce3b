"""The hostile sandbox corpus (issue 6): candidates that attack the sandbox, with the verdict each must get."""
