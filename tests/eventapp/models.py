from django.db import models


class Delivery(models.Model):
    """One row per handler run that committed: the handlers' database side effect.
    Deliberately not unique, so a repeated side effect shows up as a second row."""

    message_id = models.UUIDField(db_index=True)
    group = models.CharField(max_length=100)
    n = models.IntegerField()
    attempt = models.IntegerField()
    correlation_id = models.UUIDField(null=True)
    correlation_sequence = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.group} {self.message_id} attempt {self.attempt}"


class Run(models.Model):
    """A flow-control probe's handler run: when it started and ended (wall clock, seconds),
    in which process. Written by the handler, so only committed runs are kept."""

    group = models.CharField(max_length=100)
    n = models.IntegerField()
    started = models.FloatField()
    ended = models.FloatField()
    pid = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.group} {self.n}"
