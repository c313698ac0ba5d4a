-- One server, one database per concern: Airflow's metadata, MLflow's tracking and
-- registry, and the identity store. Runs once, when the data volume is empty.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
CREATE DATABASE faces;
