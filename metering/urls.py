from django.urls import path

from metering import views

urlpatterns = [
    path("events", views.IngestEventsView.as_view(), name="api-events"),
    path("meters", views.MetersView.as_view(), name="api-meters"),
]
