"""Errors a job step raises to say whether trying again can help."""


class JobError(Exception):
    """Base class; the message is shown to admins and must not contain PHI."""


class PermanentJobError(JobError):
    """Trying again cannot help (bad or out-of-scope input): the job fails at once."""


class TransientJobError(JobError):
    """Trying again may help (a resource briefly unavailable): the job is retried with backoff."""
