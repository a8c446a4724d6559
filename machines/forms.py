"""Portal forms for machine history: staff corrections go through machines.services, never a free edit."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .models import Intervention, Use


def _check_times(cleaned: dict[str, Any]) -> None:
    start, end = cleaned.get("started_at"), cleaned.get("ended_at")
    now = timezone.now()
    if start and start > now:
        raise forms.ValidationError({"started_at": _("The start cannot be in the future.")})
    if end and end > now:
        raise forms.ValidationError({"ended_at": _("The end cannot be in the future.")})
    if start and end and end < start:
        raise forms.ValidationError({"ended_at": _("The end cannot be before the start.")})


class UseAddForm(forms.ModelForm):
    """Manual registration of a use the board never reported; its duration goes on the hour meter."""

    class Meta:
        model = Use
        fields = ["member", "machine", "started_at", "ended_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["ended_at"].required = True

    def clean(self) -> dict[str, Any]:
        super().clean()  # a ModelForm's clean() returns self.cleaned_data
        cleaned = self.cleaned_data
        _check_times(cleaned)
        return cleaned


class UseCorrectForm(forms.ModelForm):
    """A staff correction of start and end (end an open use, fix a duration); the hour meter follows."""

    class Meta:
        model = Use
        fields = ["started_at", "ended_at"]

    def clean(self) -> dict[str, Any]:
        super().clean()  # a ModelForm's clean() returns self.cleaned_data
        cleaned = self.cleaned_data
        _check_times(cleaned)
        if self.instance.ended_at and not cleaned.get("ended_at") and "ended_at" not in self.errors:
            raise forms.ValidationError({"ended_at": _("A closed use cannot be reopened; delete it instead.")})
        return cleaned


class InterventionAddForm(forms.ModelForm):
    """Maintenance entered by hand (possibly back-dated); the machine follows from the plan item."""

    class Meta:
        model = Intervention
        fields = ["plan", "member", "performed_at", "note"]

    def clean_performed_at(self) -> Any:
        when = self.cleaned_data["performed_at"]
        if when > timezone.now():
            raise forms.ValidationError(_("An intervention cannot be in the future."))
        return when
