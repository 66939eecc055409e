//! How a batch rolls out (SPEC §12): the rollout parameters, their parsing, and the decision of
//! each step — which agents to start now, which to give up on as offline, whether the failure
//! threshold is exceeded. Pure functions over plain data: the store applies them inside its
//! transaction, and the tests call them without a database.

use std::fmt;

/// A size or a threshold: a count, or a percentage of the batch's agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u64),
    Percent(u32),
}

impl Amount {
    fn parse(text: &str, what: &str) -> Result<Amount, String> {
        let text = text.trim();
        let bad = || format!("{what} must be N or N%, got {text:?}");
        if let Some(number) = text.strip_suffix('%') {
            let percent: u32 = number.trim().parse().map_err(|_| bad())?;
            if percent == 0 || percent > 100 {
                return Err(format!("{what} percentage must be 1-100, got {text:?}"));
            }
            Ok(Amount::Percent(percent))
        } else {
            Ok(Amount::Count(text.parse().map_err(|_| bad())?))
        }
    }

    /// A step size out of `count` agents: percentages round up, and a step is at least 1.
    fn step_size(self, count: u64) -> u64 {
        let size = match self {
            Amount::Count(n) => n,
            Amount::Percent(percent) => (count * u64::from(percent)).div_ceil(100),
        };
        size.max(1)
    }

    /// Whether `failures` out of `count` agents exceed this threshold (equal is not exceeded).
    pub fn exceeded_by(self, failures: u64, count: u64) -> bool {
        match self {
            Amount::Count(n) => failures > n,
            Amount::Percent(percent) => failures * 100 > u64::from(percent) * count,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// Sliding keeps up to a step's size running (Salt's `-b`); lockstep starts a step only once
/// the previous one has settled (Ansible's `serial`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Sliding,
    Lockstep,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Sliding => "sliding",
            Window::Lockstep => "lockstep",
        }
    }

    pub fn parse(text: &str) -> Result<Window, String> {
        match text.trim() {
            "" | "sliding" => Ok(Window::Sliding),
            "lockstep" => Ok(Window::Lockstep),
            other => Err(format!("window must be sliding or lockstep, got {other:?}")),
        }
    }
}

/// What to do with an agent that is offline when its turn comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offline {
    /// Report it as `offline` at once.
    Skip,
    /// Wait up to this many seconds from the batch's start for it to come back, then report it
    /// as `offline`: a batch never waits for ever.
    Wait(u64),
}

impl Offline {
    pub fn parse(text: &str) -> Result<Offline, String> {
        let text = text.trim();
        match text {
            "" | "skip" => Ok(Offline::Skip),
            _ => {
                let seconds = text
                    .strip_prefix("wait:")
                    .and_then(|seconds| seconds.parse::<u64>().ok())
                    .filter(|seconds| *seconds <= 86_400)
                    .ok_or_else(|| {
                        format!("offline must be skip or wait:<seconds up to 86400>, got {text:?}")
                    })?;
                Ok(Offline::Wait(seconds))
            }
        }
    }
}

impl fmt::Display for Offline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offline::Skip => f.write_str("skip"),
            Offline::Wait(seconds) => write!(f, "wait:{seconds}"),
        }
    }
}

/// The rollout of a batch, as `batch/create` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Step sizes in order; the last one repeats until every agent has had its turn.
    pub steps: Vec<Amount>,
    pub window: Window,
    pub max_fail: Option<Amount>,
    /// Lockstep only: the pause between one step settling and the next starting.
    pub wait_s: u64,
    pub offline: Offline,
}

/// Steps of a ramp at most: a ramp is a handful of sizes, not a list of agents.
const MAX_STEPS: usize = 32;

impl Rollout {
    /// Parses the parameters as `batch/create` receives them; empty means the default. The
    /// error names the parameter (`[403.11]` at the API).
    pub fn parse(
        size: &str,
        window: &str,
        max_fail: &str,
        wait_s: &str,
        offline: &str,
    ) -> Result<Rollout, String> {
        let steps = match size.trim() {
            "" => vec![Amount::Percent(100)],
            ramp => {
                let steps = ramp
                    .split(',')
                    .map(|step| Amount::parse(step, "size"))
                    .collect::<Result<Vec<_>, _>>()?;
                if steps.contains(&Amount::Count(0)) {
                    return Err(format!("size steps must be at least 1, got {ramp:?}"));
                }
                if steps.len() > MAX_STEPS {
                    return Err(format!("size has more than {MAX_STEPS} steps"));
                }
                steps
            }
        };
        let max_fail = match max_fail.trim() {
            "" => None,
            text => Some(Amount::parse(text, "max_fail")?),
        };
        let wait_s = match wait_s.trim() {
            "" => 0,
            text => text
                .parse::<u64>()
                .ok()
                .filter(|seconds| *seconds <= 86_400)
                .ok_or_else(|| format!("wait_s must be 0-86400 seconds, got {text:?}"))?,
        };
        Ok(Rollout {
            steps,
            window: Window::parse(window)?,
            max_fail,
            wait_s,
            offline: Offline::parse(offline)?,
        })
    }

    /// The size text as stored and shown: `1,5,20%`.
    pub fn size_text(&self) -> String {
        self.steps
            .iter()
            .map(Amount::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The step the agent at position `seq` (0-based, rollout order) belongs to, and that
    /// step's size, for a batch of `count` agents.
    pub fn step_of(&self, seq: u64, count: u64) -> (usize, u64) {
        let mut start = 0u64;
        for (step, amount) in self.steps.iter().enumerate() {
            let size = amount.step_size(count);
            if seq < start.saturating_add(size) || step + 1 == self.steps.len() {
                // The last step repeats: count whole repetitions past its first start.
                let repeats = seq.saturating_sub(start) / size;
                return (
                    step.saturating_add(usize::try_from(repeats).unwrap_or(usize::MAX)),
                    size,
                );
            }
            start = start.saturating_add(size);
        }
        (0, 1)
    }
}

/// Where an agent of a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentState {
    Pending,
    Running,
    Ok,
    Failed,
    Timeout,
    Offline,
    Skipped,
    Stopped,
}

impl AgentState {
    pub const ALL: [AgentState; 8] = [
        AgentState::Pending,
        AgentState::Running,
        AgentState::Ok,
        AgentState::Failed,
        AgentState::Timeout,
        AgentState::Offline,
        AgentState::Skipped,
        AgentState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Pending => "pending",
            AgentState::Running => "running",
            AgentState::Ok => "ok",
            AgentState::Failed => "failed",
            AgentState::Timeout => "timeout",
            AgentState::Offline => "offline",
            AgentState::Skipped => "skipped",
            AgentState::Stopped => "stopped",
        }
    }

    pub fn parse(text: &str) -> Option<AgentState> {
        AgentState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    /// The failure threshold counts these; offline agents are reported apart.
    pub fn is_failure(self) -> bool {
        matches!(self, AgentState::Failed | AgentState::Timeout)
    }
}

/// An agent still waiting for its turn, with whether it is online now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub seq: u64,
    pub online: bool,
}

/// What the batch looks like before a step is decided.
#[derive(Clone)]
pub struct Progress<'a> {
    pub count: u64,
    pub running: u64,
    pub failures: u64,
    /// Agents waiting for their turn, in rollout order.
    pub waiting: &'a [Waiting],
    /// Sliding: the lowest position still running, if any. The window is the size of the step
    /// of the first agent not yet settled, so that a ramp widens only as earlier steps finish.
    pub lowest_running: Option<u64>,
    /// Lockstep: whether any agent of this step has left `pending` (the step has started).
    pub started_steps: &'a dyn Fn(usize) -> bool,
    pub now: u64,
    pub created_at: u64,
    /// Lockstep: when the previous step settled.
    pub step_settled_at: Option<u64>,
}

/// The decision of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Start these agents now.
    pub release: Vec<u64>,
    /// Report these as offline.
    pub offline: Vec<u64>,
    /// Lockstep: record that the previous step settled now.
    pub mark_step_settled: bool,
    /// The failure threshold is exceeded: start nobody else.
    pub threshold_exceeded: bool,
}

/// Decides which waiting agents start now.
pub fn plan(rollout: &Rollout, progress: &Progress<'_>) -> Plan {
    let mut plan = Plan::default();
    if let Some(max_fail) = rollout.max_fail {
        if max_fail.exceeded_by(progress.failures, progress.count) {
            plan.threshold_exceeded = true;
            return plan;
        }
    }
    let Some(first) = progress.waiting.first() else {
        return plan;
    };
    let give_up_on_offline = match rollout.offline {
        Offline::Skip => true,
        Offline::Wait(seconds) => {
            progress.now
                >= progress
                    .created_at
                    .saturating_add(seconds.saturating_mul(1000))
        }
    };
    let (step, _) = rollout.step_of(first.seq, progress.count);
    let candidates: Vec<Waiting> = match rollout.window {
        Window::Sliding => progress.waiting.to_vec(),
        Window::Lockstep => {
            let step_started = (progress.started_steps)(step);
            if !step_started {
                if progress.running > 0 {
                    return plan;
                }
                if step > 0 {
                    match progress.step_settled_at {
                        None => {
                            plan.mark_step_settled = true;
                            if rollout.wait_s > 0 {
                                return plan;
                            }
                        }
                        Some(settled_at) => {
                            let resume_at =
                                settled_at.saturating_add(rollout.wait_s.saturating_mul(1000));
                            if progress.now < resume_at {
                                return plan;
                            }
                        }
                    }
                }
            }
            progress
                .waiting
                .iter()
                .filter(|waiting| rollout.step_of(waiting.seq, progress.count).0 == step)
                .copied()
                .collect()
        }
    };
    let first_unsettled = progress
        .lowest_running
        .map_or(first.seq, |running| running.min(first.seq));
    let window = rollout.step_of(first_unsettled, progress.count).1;
    let mut running = progress.running;
    for waiting in candidates {
        if !waiting.online {
            if give_up_on_offline {
                plan.offline.push(waiting.seq);
            }
            continue;
        }
        if rollout.window == Window::Sliding && running >= window {
            // Later agents wait for a slot; offline ones already seen are reported above.
            break;
        }
        plan.release.push(waiting.seq);
        running += 1;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(size: &str, window: &str, max_fail: &str, offline: &str) -> Rollout {
        Rollout::parse(size, window, max_fail, "", offline).unwrap()
    }

    #[test]
    fn parameters_parse_and_refuse_with_the_parameter_named() {
        let parsed = Rollout::parse("1,5,20%", "lockstep", "5%", "3", "wait:30").unwrap();
        assert_eq!(
            parsed.steps,
            [Amount::Count(1), Amount::Count(5), Amount::Percent(20)]
        );
        assert_eq!(parsed.size_text(), "1,5,20%");
        assert_eq!(parsed.window, Window::Lockstep);
        assert_eq!(parsed.max_fail, Some(Amount::Percent(5)));
        assert_eq!(parsed.wait_s, 3);
        assert_eq!(parsed.offline, Offline::Wait(30));
        let defaults = Rollout::parse("", "", "", "", "").unwrap();
        assert_eq!(defaults.steps, [Amount::Percent(100)]);
        assert_eq!(defaults.window, Window::Sliding);
        assert_eq!(defaults.max_fail, None);
        assert_eq!(defaults.offline, Offline::Skip);
        for (args, fragment) in [
            (["x", "", "", "", ""], "size"),
            (["0", "", "", "", ""], "size"),
            (["0%", "", "", "", ""], "size"),
            (["101%", "", "", "", ""], "size"),
            (["1,,2", "", "", "", ""], "size"),
            (["", "tumbling", "", "", ""], "window"),
            (["", "", "-1", "", ""], "max_fail"),
            (["", "", "", "soon", ""], "wait_s"),
            (["", "", "", "", "wait"], "offline"),
            (["", "", "", "", "wait:x"], "offline"),
        ] {
            let err = Rollout::parse(args[0], args[1], args[2], args[3], args[4]).unwrap_err();
            assert!(err.starts_with(fragment), "{args:?}: {err}");
        }
    }

    #[test]
    fn sizes_round_up_and_ramps_repeat_their_last_step() {
        let ten_percent = rollout("10%", "", "", "");
        assert_eq!(ten_percent.step_of(0, 25), (0, 3), "2.5 rounds up to 3");
        assert_eq!(ten_percent.step_of(3, 25), (1, 3));
        assert_eq!(
            rollout("1%", "", "", "").step_of(0, 5),
            (0, 1),
            "at least 1"
        );
        let ramp = rollout("1,5,20%", "", "", "");
        assert_eq!(ramp.step_of(0, 100), (0, 1));
        assert_eq!(ramp.step_of(1, 100), (1, 5));
        assert_eq!(ramp.step_of(5, 100), (1, 5));
        assert_eq!(ramp.step_of(6, 100), (2, 20));
        assert_eq!(ramp.step_of(26, 100), (3, 20));
    }

    #[test]
    fn thresholds_stop_when_exceeded_not_when_equalled() {
        assert!(!Amount::Count(2).exceeded_by(2, 10));
        assert!(Amount::Count(2).exceeded_by(3, 10));
        assert!(!Amount::Percent(20).exceeded_by(2, 10));
        assert!(Amount::Percent(20).exceeded_by(3, 10));
        assert!(!Amount::Count(0).exceeded_by(0, 10));
        assert!(Amount::Count(0).exceeded_by(1, 10));
    }

    fn waiting(seqs: std::ops::Range<u64>) -> Vec<Waiting> {
        seqs.map(|seq| Waiting { seq, online: true }).collect()
    }

    fn progress<'a>(
        waiting: &'a [Waiting],
        running: u64,
        started: &'a dyn Fn(usize) -> bool,
    ) -> Progress<'a> {
        Progress {
            count: 10,
            running,
            failures: 0,
            waiting,
            lowest_running: None,
            started_steps: started,
            now: 1_000,
            created_at: 0,
            step_settled_at: None,
        }
    }

    #[test]
    fn sliding_keeps_a_step_running() {
        let sliding = rollout("3", "", "", "");
        let not_started = |_| false;
        let all = waiting(0..10);
        assert_eq!(
            plan(&sliding, &progress(&all, 0, &not_started)).release,
            [0, 1, 2]
        );
        assert_eq!(
            plan(&sliding, &progress(&all[3..], 2, &not_started)).release,
            [3]
        );
        assert!(plan(&sliding, &progress(&all[3..], 3, &not_started))
            .release
            .is_empty());
    }

    #[test]
    fn a_sliding_ramp_widens_as_earlier_steps_settle() {
        let ramp = rollout("1,2,3", "", "", "");
        let not_started = |_| false;
        let all = waiting(0..10);
        assert_eq!(plan(&ramp, &progress(&all, 0, &not_started)).release, [0]);
        let mut first_running = progress(&all[1..], 1, &not_started);
        first_running.lowest_running = Some(0);
        assert!(
            plan(&ramp, &first_running).release.is_empty(),
            "step 0 is 1 wide"
        );
        assert_eq!(
            plan(&ramp, &progress(&all[1..], 0, &not_started)).release,
            [1, 2]
        );
        let mut third_step = progress(&all[3..], 1, &not_started);
        third_step.lowest_running = Some(2);
        assert_eq!(
            plan(&ramp, &third_step).release,
            [3],
            "still 2 wide while seq 2 runs"
        );
    }

    #[test]
    fn lockstep_waits_for_the_step_and_the_pause() {
        let lockstep = Rollout::parse("4", "lockstep", "", "2", "").unwrap();
        let all = waiting(0..10);
        let not_started = |_| false;
        assert_eq!(
            plan(&lockstep, &progress(&all, 0, &not_started)).release,
            [0, 1, 2, 3]
        );
        // The second step waits while the first runs, then for wait_s after it settled.
        assert!(plan(&lockstep, &progress(&all[4..], 1, &not_started))
            .release
            .is_empty());
        let settled = plan(&lockstep, &progress(&all[4..], 0, &not_started));
        assert!(settled.mark_step_settled && settled.release.is_empty());
        let mut paused = progress(&all[4..], 0, &not_started);
        paused.step_settled_at = Some(500);
        paused.now = 2_499;
        assert!(plan(&lockstep, &paused).release.is_empty());
        paused.now = 2_500;
        assert_eq!(plan(&lockstep, &paused).release, [4, 5, 6, 7]);
    }

    #[test]
    fn offline_agents_are_skipped_or_waited_for_up_to_the_bound() {
        let mut fleet = waiting(0..4);
        fleet[1].online = false;
        let not_started = |_| false;
        let skip = rollout("2", "", "", "skip");
        let decided = plan(&skip, &progress(&fleet, 0, &not_started));
        assert_eq!(decided.release, [0, 2]);
        assert_eq!(decided.offline, [1]);
        let wait = rollout("2", "", "", "wait:5");
        let decided = plan(&wait, &progress(&fleet, 0, &not_started));
        assert_eq!(decided.release, [0, 2]);
        assert!(decided.offline.is_empty(), "still within the wait");
        let mut late = progress(&fleet, 0, &not_started);
        late.now = 5_000;
        assert_eq!(plan(&wait, &late).offline, [1]);
    }

    #[test]
    fn an_exceeded_threshold_starts_nobody() {
        let guarded = rollout("2", "", "1", "");
        let all = waiting(2..10);
        let not_started = |_| false;
        let mut at_threshold = progress(&all, 0, &not_started);
        at_threshold.failures = 1;
        assert_eq!(plan(&guarded, &at_threshold).release, [2, 3]);
        at_threshold.failures = 2;
        let stopped = plan(&guarded, &at_threshold);
        assert!(stopped.threshold_exceeded && stopped.release.is_empty());
    }
}
