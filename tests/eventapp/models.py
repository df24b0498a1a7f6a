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


class Step(models.Model):
    """An ordering probe's handler run that committed (written by the handler, in its inbox
    row's transaction): the id order is the order the runs of a key committed in."""

    group = models.CharField(max_length=100)
    key = models.CharField(max_length=100)
    step = models.IntegerField()
    message_id = models.UUIDField()
    attempt = models.IntegerField()
    publisher = models.CharField(max_length=20, blank=True, default="")
    pid = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.group} {self.key} {self.step}"


class Published(models.Model):
    """A racing publisher's record, written in its publishing transaction right after
    publish(): how many messages of the key that transaction could see then (its own
    included). Equal to the message's ordering_seq exactly when every smaller number had
    committed before this one was taken."""

    message_id = models.UUIDField()
    key = models.CharField(max_length=100)
    publisher = models.CharField(max_length=20)
    visible = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.publisher} {self.key} {self.message_id}"
