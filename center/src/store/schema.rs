//! The diesel view of the tables created by `center/migrations/{sqlite,postgres}`.
//!
//! Written by hand (not by `diesel print-schema`) because one schema serves both backends:
//! the column types below are the ones both migrations agree on. It holds no queries.

diesel::table! {
    queues (id) {
        id -> Text,
        app -> Text,
        auth_id -> Text,
        status -> Text,
        created_at -> BigInt,
        committed_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    tasks (id) {
        id -> Text,
        queue_id -> Nullable<Text>,
        task_type -> Text,
        agent -> Text,
        app -> Text,
        func -> Text,
        param -> Text,
        timeout_s -> BigInt,
        proxy -> Text,
        mode -> Text,
        depend_task_id -> Nullable<Text>,
        status -> Text,
        flag -> Text,
        error -> Text,
        worker_flag -> Nullable<Integer>,
        worker_message -> Nullable<Text>,
        worker_costtime -> Nullable<BigInt>,
        dispatched_by -> Nullable<Text>,
        dispatched_at -> Nullable<BigInt>,
        deadline -> Nullable<BigInt>,
        created_at -> BigInt,
        finished_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    audit_log (id) {
        id -> BigInt,
        at -> BigInt,
        auth_id -> Text,
        action -> Text,
        target -> Text,
        agent -> Nullable<Text>,
        outcome -> Text,
    }
}

diesel::table! {
    agents (id) {
        id -> Text,
        ip -> Text,
        asset -> Text,
        version -> Text,
        apps -> Text,
        last_heartbeat_at -> BigInt,
        interval_ms -> BigInt,
        labels -> Text,
    }
}

diesel::joinable!(tasks -> queues (queue_id));
diesel::allow_tables_to_appear_in_same_query!(queues, tasks, audit_log, agents);

diesel::table! {
    crons (id) {
        id -> Text,
        ip -> Text,
        app -> Text,
        func -> Text,
        param -> Text,
        rule -> Text,
        mode -> Text,
        timeout_s -> BigInt,
        proxy -> Text,
        enabled -> Integer,
        source -> Text,
        file -> Nullable<Text>,
        entry -> Nullable<Text>,
        auth_id -> Text,
        revision -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
        schedule_from -> BigInt,
        last_fire_time -> Nullable<BigInt>,
        last_exec_time -> Nullable<BigInt>,
        last_exec_result -> Nullable<Text>,
    }
}

diesel::table! {
    cron_firings (cron_id, fire_time) {
        cron_id -> Text,
        fire_time -> BigInt,
        task_id -> Text,
        center_instance -> Text,
        claimed_at -> BigInt,
    }
}

diesel::table! {
    apps (name) {
        name -> Text,
        display_name -> Text,
        online_version -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    app_versions (app, version) {
        app -> Text,
        version -> Text,
        sha256 -> Text,
        size -> BigInt,
        uploaded_by -> Text,
        uploaded_at -> BigInt,
    }
}

diesel::table! {
    auth_ids (auth_id) {
        auth_id -> Text,
        auth_key -> Text,
        role -> Text,
        comment -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    app_auth_ids (app, auth_id) {
        app -> Text,
        auth_id -> Text,
    }
}

diesel::table! {
    app_agents (app, agent) {
        app -> Text,
        agent -> Text,
    }
}

diesel::joinable!(app_versions -> apps (app));
diesel::allow_tables_to_appear_in_same_query!(apps, app_versions);

diesel::table! {
    submit_replies (task_id) {
        task_id -> Text,
        reply_to -> Text,
        correlation_id -> Nullable<Text>,
        json -> Bool,
        created_at -> BigInt,
    }
}

diesel::joinable!(submit_replies -> tasks (task_id));
diesel::allow_tables_to_appear_in_same_query!(submit_replies, tasks);

diesel::table! {
    batches (id) {
        id -> Text,
        auth_id -> Text,
        app -> Text,
        func -> Text,
        param -> Text,
        timeout_s -> BigInt,
        proxy -> Text,
        mode -> Text,
        target -> Text,
        size -> Text,
        window_model -> Text,
        max_fail -> Text,
        wait_s -> BigInt,
        offline -> Text,
        state -> Text,
        stop_reason -> Text,
        agent_count -> BigInt,
        retry_of -> Nullable<Text>,
        created_at -> BigInt,
        step_settled_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    batch_agents (batch_id, seq) {
        batch_id -> Text,
        seq -> BigInt,
        agent -> Text,
        ip -> Text,
        state -> Text,
        task_id -> Nullable<Text>,
    }
}

diesel::joinable!(batch_agents -> batches (batch_id));
diesel::allow_tables_to_appear_in_same_query!(batches, batch_agents, tasks);
// The dashboard's task filter by auth id reads the crons' firings in a subselect.
diesel::allow_tables_to_appear_in_same_query!(tasks, crons, cron_firings);

diesel::table! {
    task_output (task_id, stream, byte_offset) {
        task_id -> Text,
        stream -> Text,
        byte_offset -> BigInt,
        byte_end -> BigInt,
        prev_end -> BigInt,
        data -> Binary,
        eof -> Bool,
        dropped -> BigInt,
        stored_at -> BigInt,
    }
}
