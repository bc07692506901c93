"""Errors a job step raises to say whether trying again can help."""


class JobError(Exception):
    """Base class; the message is shown to admins and must not contain PHI."""


class PermanentJobError(JobError):
    """Trying again cannot help (bad or out-of-scope input): the job fails at once."""


class TransientJobError(JobError):
    """Trying again may help (a resource briefly unavailable): the job is retried with backoff."""


class SupersededJobError(JobError):
    """A newer job of the same study exists (a late series came while this one ran): this
    job's results would be out of date, or take the newer job's revision. It ends superseded
    without recording any."""

    def __init__(self, newer_job_id: int) -> None:
        super().__init__(f"by job {newer_job_id}")
        self.newer_job_id = newer_job_id
