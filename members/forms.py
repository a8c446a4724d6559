"""Portal forms for members and their cards."""

from __future__ import annotations

from collections.abc import Iterator

from django import forms
from django.contrib.auth.forms import PasswordResetForm, UserChangeForm
from django.utils.translation import gettext_lazy as _

from machines import safety
from machines.models import Machine
from machines.training_forms import RuleFields

from .models import Card, Member, Role, normalize_uid

ROLE_HELP = _(
    "What each role grants is shown next to its name. Plain card holders need a role that grants only the machines "
    "they are authorized for; a role marked ⚠ opens every machine, blocked ones too."
)


class RoleChoiceField(forms.ModelChoiceField):
    """A role, labelled with what it grants, wherever a member's role is chosen."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["help_text"] = ROLE_HELP
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def label_from_instance(self, obj: Role) -> str:
        return obj.choice_label()


class CardForm(forms.ModelForm):
    """A card row: the UID is stored as the board sends it (lower-case hex, no separators)."""

    class Meta:
        model = Card
        fields = ["uid", "active"]
        widgets = {"uid": forms.TextInput(attrs={"class": "fab-uid", "autocomplete": "off", "size": 16})}

    def clean_uid(self) -> str:
        return normalize_uid(self.cleaned_data.get("uid", ""))

    def has_changed(self) -> bool:
        # A row pre-filled from an unknown card must be saved even when the user does not touch it.
        return super().has_changed() or (self.instance.pk is None and bool(self.initial.get("uid")))


class MemberAddForm(forms.ModelForm):
    """New member: card holders get no usable password; staff set theirs by e-mail or on the password page."""

    class Meta:
        model = Member
        fields = [
            "first_name",
            "last_name",
            "email",
            "role",
            "disabled",
            "receive_weekly_summary",
            "training_reminders",
            "language",
            "is_staff",
        ]
        field_classes = {"role": RoleChoiceField}

    def save(self, commit: bool = True) -> Member:
        member = super().save(commit=False)
        member.set_unusable_password()
        if commit:
            member.save()
            self.save_m2m()
        return member


class MemberChangeForm(UserChangeForm):
    class Meta:
        model = Member
        fields = "__all__"
        field_classes = {"role": RoleChoiceField}


class StaffPasswordResetForm(PasswordResetForm):
    """Django's reset form, extended to staff who have never had a password (imported, or added by an admin).

    Card holders without portal access still get nothing: they have no use for a password. Neither do staff while
    single sign-on has replaced password login (``OIDC_PASSWORD_LOGIN`` off): only superusers, the break-glass.
    """

    def get_users(self, email: str) -> Iterator[Member]:
        from members.sso import password_login_allowed

        members = Member.objects.filter(email__iexact=email, is_active=True, deleted_at__isnull=True)
        if not password_login_allowed():
            members = members.filter(is_superuser=True)
        return (m for m in members if m.has_usable_password() or m.is_staff)


class _MachineChoiceField(forms.ModelMultipleChoiceField):
    """Machines, each labelled with its type."""

    def label_from_instance(self, obj: Machine) -> str:
        return f"{obj.name} ({obj.type})"


class BulkAuthorizationForm(RuleFields):
    """Grant or revoke machines for several members: only the machines ``trainer`` may train are offered and
    accepted; new authorizations take the chosen expiry (the machine type's by default)."""

    GRANT = "grant"
    REVOKE = "revoke"

    operation = forms.ChoiceField(
        label=_("Operation"),
        choices=[(GRANT, _("Grant access to these machines")), (REVOKE, _("Revoke access to these machines"))],
        widget=forms.RadioSelect,
        initial=GRANT,
    )
    machines = _MachineChoiceField(
        label=_("Machines"),
        queryset=Machine.objects.select_related("type").order_by("name"),
        widget=forms.CheckboxSelectMultiple,
    )

    def __init__(self, *args: object, trainer: Member, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        field = self.fields["machines"]
        assert isinstance(field, forms.ModelMultipleChoiceField)
        field.queryset = safety.trainable_machines(trainer).select_related("type").order_by("name")
