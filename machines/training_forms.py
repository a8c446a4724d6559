"""Portal forms of the training lifecycle: the expiry of a new authorization, granting it as a trainer, and a
machine type's training rule.

Every form that grants takes the acting staff member (``trainer``) and offers, and accepts, only the machines they
may train (``safety.trainable_machines``): a forged POST for another machine is an invalid choice.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.widgets import AdminDateWidget
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.forms.utils import flatatt
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy as _

from members.models import Member

from . import safety
from .models import Authorization, Machine, MachineType
from .training import TYPE_RULE, Rule

Expiry = Authorization.Expiry
NEEDS_DAYS = (Expiry.AFTER_DAYS, Expiry.IDLE_DAYS)
TYPE_DEFAULT = ""
RULE_CHOICES = [(TYPE_DEFAULT, _("as the machine type says")), *Expiry.choices]


class QuickSelect(forms.Select):
    """A <select> drawn in Python: Django's widget includes a template per option, which for a lab's 1,000 machines
    made the member page's two machine lists (the new row and its template) cost 100 ms at 1,000,000 uses."""

    def render(self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None) -> SafeString:
        context = self.get_context(name, value, attrs)["widget"]
        selected = {str(v) for v in context["value"]}
        options = format_html_join(
            "",
            '<option value="{}"{}>{}</option>',
            (
                (choice_value, mark_safe(" selected") if str(choice_value) in selected else "", label)
                for choice_value, label in self.choices
            ),
        )
        return format_html('<select name="{}"{}>{}</select>', name, flatatt(context["attrs"]), options)


class MachineChoiceField(forms.ModelChoiceField):
    """A machine, labelled with its type."""

    widget = QuickSelect

    def label_from_instance(self, obj: Machine) -> str:
        return f"{obj.name} ({obj.type})"


def rule_field() -> forms.ChoiceField:
    return forms.ChoiceField(label=_("expires"), choices=RULE_CHOICES, required=False)


def days_field() -> forms.IntegerField:
    return forms.IntegerField(label=_("days"), min_value=1, max_value=36500, required=False)


def on_date_field() -> forms.DateField:
    return forms.DateField(label=_("on"), required=False, widget=AdminDateWidget)


def check_rule(form: forms.BaseForm, data: dict[str, Any]) -> None:
    """A rule with days needs them; one on a date needs a date that has not passed."""
    rule = data.get("rule") or TYPE_DEFAULT
    if rule in NEEDS_DAYS and not data.get("days"):
        form.add_error("days", _("How many days? This rule needs a number of days."))
    if rule == Expiry.ON_DATE:
        day = data.get("on_date")
        if day is None:
            form.add_error("on_date", _("On which date? This rule needs a date."))
        elif day < timezone.localdate():
            form.add_error("on_date", _("The date is in the past: the training would be expired already."))


def rule_from(data: dict[str, Any]) -> Rule:
    rule = data.get("rule") or TYPE_DEFAULT
    if rule == TYPE_DEFAULT:
        return TYPE_RULE
    return Rule(
        expiry=rule,
        days=data.get("days") if rule in NEEDS_DAYS else None,
        on_date=data.get("on_date") if rule == Expiry.ON_DATE else None,
    )


class RuleFields(forms.Form):
    """The expiry of new trainings (the bulk grant): the machine type's rule unless another is chosen."""

    rule = rule_field()
    days = days_field()
    on_date = on_date_field()

    def clean(self) -> dict[str, Any]:
        super().clean()
        check_rule(self, self.cleaned_data)
        return self.cleaned_data

    def training_rule(self) -> Rule:
        return rule_from(self.cleaned_data)


class AuthorizationGrantForm(forms.ModelForm):
    """A new authorization (portal list, member page, machine page): granted through ``safety.grant`` with the
    staff member as its trainer. Subclassed per request with ``trainer`` set (:func:`for_trainer`)."""

    trainer: Member | None = None
    rule = rule_field()
    days = days_field()
    on_date = on_date_field()

    class Meta:
        model = Authorization
        fields = ["member", "machine"]
        field_classes = {"machine": MachineChoiceField}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "machine" in self.fields and self.trainer is not None:
            field = self.fields["machine"]
            assert isinstance(field, forms.ModelChoiceField)
            field.queryset = safety.trainable_machines(self.trainer).select_related("type").order_by("name")

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        check_rule(self, data)
        machine = data.get("machine") or getattr(self.instance, "machine", None)
        if self.instance.pk is None and machine is not None and not self._may_train(machine):
            raise ValidationError(_("You are not a trainer of %(machine)s.") % {"machine": machine})
        return data

    def _may_train(self, machine: Machine) -> bool:
        return self.trainer is not None and safety.may_train(self.trainer, machine)

    def training_rule(self) -> Rule:
        return rule_from(self.cleaned_data)

    def save(self, commit: bool = True) -> Authorization:
        if self.instance.pk is not None:
            return super().save(commit)
        authorization = self.training_rule().grant(self.instance.member, self.instance.machine, by=self.trainer)
        self.instance = authorization
        return authorization

    def save_m2m(self) -> None:  # no many-to-many fields; the admin calls it after save(commit=False)
        return None


def for_trainer(form: type[AuthorizationGrantForm], trainer: Member) -> type[AuthorizationGrantForm]:
    return type(form.__name__, (form,), {"trainer": trainer})


class TrainerInlineFormSet(BaseInlineFormSet):
    """Authorizations on a member's or a machine's page: rows are removed only by a trainer of their machine."""

    trainer: Member | None = None

    def clean(self) -> None:
        super().clean()
        for form in self.deleted_forms:
            authorization = form.instance
            if authorization.pk is None or self.trainer is None:
                continue
            if not safety.may_train(self.trainer, authorization.machine):
                raise ValidationError(
                    _("You are not a trainer of %(machine)s: its authorizations stay.")
                    % {"machine": authorization.machine}
                )


class MachineTypeForm(forms.ModelForm):
    """A machine type: a training that expires needs its number of days; trainers are portal users (staff)."""

    class Meta:
        model = MachineType
        fields = [
            "name",
            "logoff_minutes",
            "grace_minutes",
            "requires_authorization",
            "training_expiry",
            "training_days",
            "check_after_use",
            "trainers",
        ]
        help_texts = {
            "training_expiry": _(
                "How long a training on these machines holds: for ever, a number of days after it, or a number of "
                "days without using the machine (each use starts the count again). An expired member is refused "
                "at the next swipe until a trainer renews them. Applies to new and renewed authorizations; a "
                "trainer may choose another rule when granting."
            ),
            "training_days": _("The number of days, for the two rules that need one."),
        }

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("training_expiry") in NEEDS_DAYS and not data.get("training_days"):
            self.add_error("training_days", _("How many days? This rule needs a number of days."))
        if data.get("training_expiry") == Expiry.NEVER:
            data["training_days"] = None
        return data


TRAINERS_HELP = _(
    "Staff who may grant, renew and sign off authorizations here (portal administrators always may). Only members "
    "with portal access are listed."
)


def trainers_field(field: forms.Field, help_text: Any) -> forms.Field:
    """The trainers of a machine or a type: ticked from the staff, with what it means."""
    assert isinstance(field, forms.ModelMultipleChoiceField)
    field.widget = forms.CheckboxSelectMultiple()
    # Set after the widget: the queryset gives the widget its choices.
    field.queryset = Member.objects.filter(is_staff=True, is_active=True, deleted_at__isnull=True).order_by(
        "first_name", "last_name"
    )
    field.help_text = help_text
    return field
