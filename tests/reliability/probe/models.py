from django.db import models


class Effect(models.Model):
    """One row per handler run that committed (written inside the handler's transaction).
    Deliberately not unique: a repeated side effect shows up as a second row."""

    message_id = models.UUIDField(db_index=True)
    group = models.CharField(max_length=100)
    n = models.IntegerField()
    attempt = models.IntegerField()
    # The worker process and its process group (the qcluster main pid: which cluster ran it).
    pid = models.IntegerField()
    pgid = models.IntegerField()
    # sha256 of text + blob as the handler received them.
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.message_id} {self.group} #{self.attempt}"


class FailedCallback(models.Model):
    """One row per call of FAILED_THRESHOLD_CALLBACK (tests.reliability.probe.callbacks)."""

    model = models.CharField(max_length=50)
    key = models.CharField(max_length=100)
    status = models.CharField(max_length=16)
    pid = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.model} {self.key}"
