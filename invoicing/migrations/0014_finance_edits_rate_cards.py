"""Finance edits the rules of a rate card (and their tiers) in the admin, like any price."""

from django.db import migrations

from billing_project.migration_utils import grant_group_permissions


def grant(apps, schema_editor) -> None:
    grant_group_permissions(
        apps,
        "Finance",
        {
            "invoicing": [
                "add_pricerate",
                "change_pricerate",
                "delete_pricerate",
                "add_priceratetier",
                "change_priceratetier",
                "delete_priceratetier",
            ]
        },
    )


class Migration(migrations.Migration):
    dependencies = [("invoicing", "0013_stripe_as_it_behaves")]
    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
